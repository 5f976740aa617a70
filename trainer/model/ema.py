"""--ema_decay=D: an exponential moving average of the trainable weights, which evaluation, every export, the served
model, keras_model.h5, TFLite and the promotion gate use instead of the weights as trained (timm's ModelEmaV2,
Model Garden's ExponentialMovingAverage).

One implementation for both engines: the average is an optimizer slot (`ema`) of every trainable variable, updated
right after the variable's own update in the same step, by the legacy Keras optimizer both engines train with
(trainer/model/models.py compile_model; model_to_estimator rebuilds it in the Estimator's graph from its config).
So it is in every checkpoint with the optimizer's state, a restart restores it (and ends as the uninterrupted
run), and a new phase, which starts a fresh optimizer state, starts a fresh average.

The update after the phase's t-th step (t = 0 for its first): avg = w on the first, then avg = d avg + (1 - d) w with
d = D, or with --ema_warmup d = min(D, (1 + t) / (10 + t)) (Model Garden's ramp, TF's ExponentialMovingAverage
`num_updates`): without it, at D = 0.9998 more than half of the average is still the first weights after 3,000 steps.
BatchNormalization's moving statistics are averages already and are used as they are.

Reading the average: `average_names(checkpoint)` maps each weight to its slot in a checkpoint of either engine
(`training/conv1/kernel/ema` on the Keras engine, `training/Adam/conv1/kernel/ema` in the Estimator's graph,
`SGD/conv1/kernel/ema` there under mixed precision);
`swapped(model)` puts the averages into the model's variables for the time of an evaluation (the Keras engine).
"""
import contextlib
from typing import Dict, Iterable

import tensorflow as tf

SLOT = "ema"


def with_average(optimizer_class, decay: float):
    """`optimizer_class`, or (D > 0) a subclass of it that keeps the average."""
    if not decay:
        return optimizer_class
    if optimizer_class not in _SUBCLASSES:
        _SUBCLASSES[optimizer_class] = registered(type(optimizer_class.__name__, (_Average, optimizer_class), {}),
                                                  "average")
    return _SUBCLASSES[optimizer_class]


_SUBCLASSES: dict = {}


def registered(cls, part: str):
    """`cls` registered with Keras under a name of its own (`trainer>Adam+average`): mixed precision's
    LossScaleOptimizer rebuilds its inner optimizer from the registered name (model_to_estimator clones it), which
    the plain class's name would turn into the plain optimizer, refusing the mixin's arguments."""
    base = getattr(cls.__mro__[2], "_trainer_name", cls.__name__)  # [1] is the mixin, [2] the optimizer.
    cls._trainer_name = f"{base}+{part}"
    return tf.keras.utils.register_keras_serializable(package="trainer", name=cls._trainer_name)(cls)


class _Average:
    """Mixed in before a legacy Keras optimizer (the class keeps the optimizer's name, which the console shows)."""

    def __init__(self, *args, ema_decay=0.0, ema_warmup=True, ema_first_step=0, **kwargs):
        super().__init__(*args, **kwargs)
        self._ema = (float(ema_decay), bool(ema_warmup), int(ema_first_step))

    def get_config(self):
        decay, warmup, first = self._ema
        return {**super().get_config(), "ema_decay": decay, "ema_warmup": warmup, "ema_first_step": first}

    def _create_slots(self, var_list):
        super()._create_slots(var_list)
        for var in var_list:
            # The weights as the slot is made (the Keras engine: the phase's start, or what a restore then
            # overwrites); zeros in the Estimator's graph, whose phase boundary writes the weights in
            # (trainer/engines/estimator/boundary.py). Either way the phase's first update copies the weights.
            self.add_slot(var, SLOT, initializer=tf.convert_to_tensor(var) if tf.executing_eagerly() else "zeros")

    def _ema_decay(self, dtype):
        decay, warmup, first = self._ema
        t = tf.cast(self.iterations - first, dtype)  # This phase's updates before this one.
        rate = tf.constant(decay, dtype)
        if warmup:
            rate = tf.minimum(rate, (1.0 + t) / (10.0 + t))
        return tf.where(t > 0, rate, tf.zeros_like(rate))

    def _averaged(self, var, update):
        with tf.control_dependencies([update]):
            average = self.get_slot(var, SLOT)
            rate = self._ema_decay(var.dtype.base_dtype)
            return tf.group(average.assign(rate * average + (1.0 - rate) * tf.convert_to_tensor(var)))

    def _resource_apply_dense(self, grad, var, apply_state=None):
        return self._averaged(var, super()._resource_apply_dense(grad, var, apply_state))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        return self._averaged(var, super()._resource_apply_sparse(grad, var, indices, apply_state))
    # Plain SGD's sparse path (embedding layers, which the built-in models do not have) bypasses this: such a
    # variable would keep no average.


def keeps_average(optimizer) -> bool:
    """Whether a compiled model's optimizer keeps the average (mixed precision's wrapper looked through)."""
    return isinstance(getattr(optimizer, "inner_optimizer", optimizer), _Average)


def average_names(names: Iterable[str], weights: Iterable[str]) -> Dict[str, str]:
    """{weight name: the checkpoint tensor holding its average} among checkpoint tensor `names` (weights whose
    average is not there, such as BatchNorm statistics or a checkpoint from before any step of its phase, are left
    out). Replica copies (`.../ema/replica_1`) are not averages of their own.

    A slot is `<scope><weight>/ema`, with one scope per checkpoint: `training/` on the Keras engine,
    `training/Adam/` in the Estimator's graph, `SGD/` there under mixed precision. The scope that names the most
    weights exactly is the checkpoint's, so a deeper weight's slot is never taken for a shallower one's."""
    names, weights = set(names), set(weights)
    counts: Dict[str, int] = {}
    for name in names:
        if not name.endswith("/" + SLOT):
            continue
        parts = name.split("/")[:-1]
        for i in range(1, len(parts)):
            if "/".join(parts[i:]) in weights:
                scope = "/".join(parts[:i]) + "/"
                counts[scope] = counts.get(scope, 0) + 1
    if not counts:
        return {}
    scope = max(sorted(counts), key=lambda s: counts[s])
    return {w: f"{scope}{w}/{SLOT}" for w in weights if f"{scope}{w}/{SLOT}" in names}


def served_values(reader, weights: Iterable[str]) -> Dict[str, object]:
    """{weight: its value as served} from a checkpoint reader: the average where the checkpoint has one, else the
    weight. A slot of zeros beside weights that are not (the Estimator's checkpoint at a run's first step, saved
    before any update) is no average yet: the weights are used."""
    import numpy as np

    shapes = reader.get_variable_to_shape_map()
    averages = average_names(shapes, [w for w in weights if w in shapes])
    values = {}
    for weight in weights:
        if weight not in shapes:
            continue
        value = reader.get_tensor(weight)
        if weight in averages:
            average = reader.get_tensor(averages[weight])
            if np.any(average) or not np.any(value):
                value = average
        values[weight] = value
    return values


def _components(variable):
    return list(variable.values) if isinstance(variable, tf.distribute.DistributedValues) else [variable]


@contextlib.contextmanager
def swapped(model: tf.keras.Model):
    """The model's trainable variables hold their averages inside the block (those the optimizer keeps one for),
    their trained values again after it. Each local copy is assigned on its own: no collective op, so the chief of a
    cluster can do it alone."""
    optimizer = getattr(model, "optimizer", None)
    if not keeps_average(optimizer):
        yield
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # Mixed precision wraps the optimizer.
    kept = []
    try:
        for var in model.trainable_variables:
            try:
                average = inner.get_slot(var, SLOT)
            except (KeyError, ValueError):
                continue  # No step in this phase yet: nothing averaged.
            for component, mean in zip(_components(var), _components(average)):
                kept.append((component, tf.identity(component)))
                component.assign(mean)
        yield
    finally:
        for component, value in kept:
            component.assign(value)
