"""Model building: the head on a trunk (trainer.model.backbones), freezing and compilation.

A model is `image -> preprocessing -> trunk -> head`. The trunk is a Keras
application (or one of the small test models), the front of a saved Keras model
(`--base_model`), optionally cut at a named layer (`--cut_layer`). Preprocessing
is made of built-in layers only (Rescaling, tf ops), so `keras_model.h5` loads
with plain `tf.keras.models.load_model` and adds no parameters. `--model_fn`
replaces all of this with the user's own uncompiled functional model.
"""
import importlib
import inspect
from typing import Optional, Sequence

import tensorflow as tf

from trainer import augmentations
from trainer.config import Config, parse_freeze
from trainer.errors import UsageError
from trainer.model import ema, layer_rates
from trainer.model.backbones import preprocessing_of, build_trunk, get_backbone, image_size

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

def default_freeze(config: Config) -> str:
    """Freeze what was learned elsewhere; train a trunk that starts from random weights."""
    if config.base_model or config.model_fn:
        return "all"
    pretrained = get_backbone(config.backbone).pretrained
    return "all" if (config.weights or ("imagenet" if pretrained else "none")) != "none" else "none"


def freeze_units(trunk: tf.keras.Model) -> list:
    """The layers a numeric --freeze/--fine_tune_freeze counts: the trunk's own layers, a nested model's (a
    --base_model wrapping MobileNetV2, say) by its layers, not as one (trial c146: `-2` unfroze all of it)."""
    units = []
    for layer in trunk.layers:
        if isinstance(layer, tf.keras.Model):
            units.extend(u for u in freeze_units(layer) if not isinstance(u, tf.keras.layers.InputLayer))
        else:
            units.append(layer)
    return units


def freeze(trunk: tf.keras.Model, spec: str) -> bool:
    """Applies --freeze to the trunk's layers; returns True if all of it is frozen."""
    value = parse_freeze(spec)
    layers = freeze_units(trunk)
    if value == "all":
        trunk.trainable = False
        return True
    if value == "none":
        trunk.trainable = True
        return False
    check_freeze_spec(len(layers), spec)
    frozen = layers[:value]  # N: the first N; -N: all but the last N.
    _set_trainable(trunk, True)
    for layer in frozen:
        layer.trainable = False
    return len(frozen) == len(layers)


def _set_trainable(model: tf.keras.Model, trainable: bool) -> None:
    """Sets a model and every layer of it (nested models' too) to `trainable`."""
    model.trainable = trainable
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            _set_trainable(layer, trainable)
        else:
            layer.trainable = trainable


def check_freeze_spec(num_layers: int, spec: str, flag: str = "freeze") -> None:
    """Refuses a numeric --freeze/--fine_tune_freeze outside the trunk's layers."""
    value = parse_freeze(spec, flag)
    if value not in ("all", "none") and not -num_layers <= value <= num_layers:
        raise UsageError(f"--{flag}={spec} is out of range: the trunk has {num_layers} layers "
                         f"(use 0..{num_layers} or -{num_layers}..-1, all or none)")


def _all_layer_names(model: tf.keras.Model) -> set:
    names = set()
    for layer in model.layers:
        names.add(layer.name)
        if isinstance(layer, tf.keras.Model):
            names |= _all_layer_names(layer)
    return names


def _head(x, config: Config, num_classes: int, taken: set):
    """Pooling, hidden Dense layers and the output layer.

    Layer names avoid those of the trunk (a --base_model may carry a head of the same
    names), because checkpoint variables are named after layers.
    """
    def name(base: str) -> str:
        candidate, n = base, 1
        while candidate in taken:
            candidate, n = f"{base}_new{n if n > 1 else ''}", n + 1
        return candidate

    if len(x.shape) == 4:
        pool = {"avg": tf.keras.layers.GlobalAveragePooling2D, "max": tf.keras.layers.GlobalMaxPooling2D,
                "flatten": tf.keras.layers.Flatten}[config.head_pooling]
        x = pool(name=name("head_pool"))(x)
    elif len(x.shape) > 2:
        x = tf.keras.layers.Flatten(name=name("head_pool"))(x)
    for i, units in enumerate(config.head_units, start=1):
        x = tf.keras.layers.Dense(units, activation="relu", name=name(f"head_dense_{i}"))(x)
        if config.dropout:
            x = tf.keras.layers.Dropout(config.dropout, name=name(f"head_dropout_{i}"))(x)
    if config.dropout and not config.head_units:
        x = tf.keras.layers.Dropout(config.dropout, name=name("head_dropout"))(x)
    if config.label_mode == "binary":
        return tf.keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name(OUTPUT_NAME))(x)
    # float32 output: under --mixed_precision the softmax and the loss stay numerically safe.
    return tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=name(OUTPUT_NAME))(x)


def build_model(config: Config, num_classes: int, data_image_shape: Optional[tuple] = None,
                freeze_spec: Optional[str] = None, trunk_inference: bool = False) -> tf.keras.Model:
    """Builds the uncompiled Keras model the run trains.

    Args:
        config: the run configuration.
        num_classes: classes of the new head.
        data_image_shape: shape of one stored image, for sources held as arrays.
        freeze_spec: the --freeze value of this phase (default: --freeze, or its default).
        trunk_inference: call the trunk in inference mode even when parts of it train (fine-tuning
            a pretrained trunk: its BatchNorm statistics stay as they are, as the Keras guide advises).
    """
    if config.label_mode == "binary" and num_classes != 2:
        raise UsageError(f"--label_mode=binary needs exactly 2 classes; the data has {num_classes}")
    if config.model_fn:
        return load_model_fn(config.model_fn, num_classes)
    if config.base_model:
        trunk = build_trunk(config, 0)
        shape = tuple(trunk.input_shape[1:])
        if config.image_size and shape[:2] != (config.image_size, config.image_size):
            raise UsageError(f"--image_size={config.image_size} differs from --base_model's input "
                             f"{shape[0]}x{shape[1]}; leave --image_size out")
        mode = "none"  # The base model carries its own preprocessing.
    else:
        size = image_size(config, data_image_shape)
        trunk = build_trunk(config, size)
        shape = (size, size, 3)
        mode = get_backbone(config.backbone).preprocess
    all_frozen = freeze(trunk, freeze_spec or config.freeze or default_freeze(config))
    inputs = tf.keras.Input(shape, name=INPUT_NAME)
    x = preprocessing_of(inputs, mode)
    # A fully frozen trunk runs in inference mode (its BatchNorm statistics stay fixed);
    # in a partly frozen one, each frozen BatchNorm layer does so by itself.
    x = trunk(x, training=False) if all_frozen or trunk_inference else trunk(x)
    outputs = _head(x, config, num_classes, _all_layer_names(trunk))
    return tf.keras.Model(inputs, outputs, name="transfer_model")


def load_model_fn(spec: str, num_classes: int) -> tf.keras.Model:
    """Imports `package.module:function` and calls it for an uncompiled functional model."""
    module_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--model_fn={spec} could not be imported: {e}") from None
    kwargs = {"num_classes": num_classes} if "num_classes" in inspect.signature(fn).parameters else {}
    try:
        model = fn(**kwargs)
    except Exception as e:  # The user's code: report it, don't crash with our traceback.
        raise UsageError(f"--model_fn={spec} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, tf.keras.Model) or not getattr(model, "_is_graph_network", False):
        raise UsageError(f"--model_fn={spec} must return a functional tf.keras.Model, "
                         f"not {type(model).__name__}")
    return model


def compile_model(model: tf.keras.Model, config: Config, learning_rate=None,
                  class_weights: Optional[Sequence[float]] = None, steps_per_execution: int = 1,
                  layer_factors: Optional[dict] = None, ema_first_step: Optional[int] = None) -> None:
    """Compiles with a legacy optimizer, which the Estimator engine's Keras conversion requires.

    Args:
        model: the model to compile (its trainable kernels get --weight_decay).
        config: the run configuration (optimizer, loss, label smoothing, clipping).
        learning_rate: a float or a `schedules.PhaseSchedule`; default --learning_rate.
        class_weights: one loss weight per class (--class_weight), or None.
        steps_per_execution: training steps per call of Model.fit's train function (the engine's).
        layer_factors: {variable: share of the learning rate} (--layer_lr_decay: trainer/model/layer_rates.py).
        ema_first_step: the phase's first step, when it trains with --ema_decay (trainer/model/ema.py); None: the
            optimizer keeps no average (evaluating, exporting).
    """
    optimizers = tf.keras.optimizers.legacy
    opt = {"adam": optimizers.Adam, "sgd": optimizers.SGD, "rmsprop": optimizers.RMSprop}[config.optimizer]
    kwargs = {"global_clipnorm": config.clip_norm} if config.clip_norm else {}
    if config.ema_decay and ema_first_step is not None:
        opt = ema.with_average(opt, config.ema_decay)
        kwargs.update(ema_decay=config.ema_decay, ema_warmup=config.ema_warmup, ema_first_step=int(ema_first_step))
    if layer_factors:
        opt, kwargs["layer_factors"] = layer_rates.with_rates(opt, layer_factors), layer_factors
    if config.weight_decay:
        add_weight_decay(model, config.weight_decay)
    num_classes = model.outputs[0].shape[-1] if config.label_mode != "binary" else 2
    loss = make_loss(config, num_classes, class_weights) if len(model.outputs) == 1 else config.resolved_loss
    model.compile(optimizer=opt(learning_rate=learning_rate or config.learning_rate, **kwargs), loss=loss,
                  metrics=[_accuracy(config, num_classes)] if len(model.outputs) == 1 else ["accuracy"],
                  steps_per_execution=steps_per_execution)


def _accuracy(config: Config, num_classes: int):
    """The accuracy of the label mode, named: Keras would guess it from the loss, wrongly for our own losses. With
    Mixup/CutMix the training labels are soft: an example counts as right when the prediction's class is the one
    with the largest share of its target (evaluation labels are never mixed)."""
    if not augmentations.mixes_labels(config.augment):
        return {"sparse": tf.keras.metrics.SparseCategoricalAccuracy,
                "categorical": tf.keras.metrics.CategoricalAccuracy,
                "binary": tf.keras.metrics.BinaryAccuracy}[config.label_mode](name="accuracy")
    binary = config.label_mode == "binary"

    def accuracy(y_true, y_pred):
        if binary:
            right = tf.equal(tf.reshape(y_true, [-1]) > 0.5, tf.reshape(y_pred, [-1]) > 0.5)
        else:
            right = tf.equal(_class_ids(y_true, num_classes), tf.argmax(y_pred, axis=-1, output_type=tf.int32))
        return tf.cast(right, tf.float32)

    return tf.keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def _soft(y_true, num_classes: int) -> bool:
    """Whether labels are [B, k] targets (one-hot or mixed) rather than class ids (decided on the static shape)."""
    return y_true.shape.rank == 2 and y_true.shape[-1] == num_classes and num_classes > 1


def _class_ids(y_true, num_classes: int):
    if _soft(y_true, num_classes):
        return tf.argmax(y_true, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(y_true, [-1]), tf.int32)


def make_loss(config: Config, num_classes: int, class_weights: Optional[Sequence[float]] = None):
    """The loss of --label_mode/--loss, with --label_smoothing, per-class weights and soft (Mixup/CutMix) targets
    when asked for.

    Smoothing works for sparse labels too (they become one-hot first); class weights scale each example's loss by
    the weight of its true class. With mixed labels both compose as they would for the mix of the two examples'
    own losses: cross-entropy is linear in its target, so sum_c lam_c w_c CE(smooth(y_c), p) is one cross-entropy
    against the target T_k = (1 - s) w_k t_k + s W / k, where t is the mixed target and W = sum_k w_k t_k (the
    mixed weight); binary cross-entropy likewise. A one-hot target gives w_y CE(smooth(y), p), as before. Under
    --loss=mse (not linear in its target) a mixed example is W x mse(smooth(t), p).
    """
    name = config.resolved_loss
    smoothing = config.label_smoothing
    soft = augmentations.mixes_labels(config.augment)
    if not smoothing and class_weights is None and not soft:
        return name
    weights = [float(w) for w in class_weights] if class_weights is not None else None  # A constant per graph.
    mode = config.label_mode

    def recipe_loss(y_true, y_pred):
        if mode == "binary":
            share = tf.reshape(tf.cast(y_true, tf.float32), tf.shape(y_pred))  # Of class 1: 0 or 1, or mixed.
            per_class = tf.concat([1.0 - share, share], axis=-1)
        elif mode == "sparse" and not _soft(y_true, num_classes):
            per_class = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), num_classes)
        else:
            per_class = tf.cast(y_true, tf.float32)
        if weights is not None:
            per_class = per_class * tf.constant(weights, tf.float32)
        mixed_weight = tf.reduce_sum(per_class, axis=-1, keepdims=True)  # [B, 1]: 1 without class weights.
        if mode == "binary":  # The weighted share of class 1, smoothed towards 1/2, over the mixed weight.
            share = tf.math.divide_no_nan(per_class[:, 1:] * (1.0 - smoothing) + mixed_weight * 0.5 * smoothing,
                                        mixed_weight)
            target = tf.reshape(share, tf.shape(y_pred))
            per_example = (tf.keras.losses.mse(target, y_pred) if name == "mse"
                           else tf.keras.losses.binary_crossentropy(target, y_pred))
        else:
            target = tf.math.divide_no_nan(per_class * (1.0 - smoothing) + mixed_weight * smoothing / num_classes,
                                         mixed_weight)
            per_example = (tf.keras.losses.mse(target, y_pred) if name == "mse"
                           else tf.keras.losses.categorical_crossentropy(target, y_pred))
        return per_example * tf.reshape(mixed_weight, [-1])

    return recipe_loss


def add_weight_decay(model: tf.keras.Model, rate: float) -> None:
    """L2 on the kernels of trainable layers (not biases, not BatchNorm), as part of each layer's config,
    so the Estimator's clone of the model carries it into its loss."""
    for layer in _leaf_layers(model):
        if layer.trainable and hasattr(layer, "kernel_regularizer") and getattr(layer, "kernel", None) is not None:
            layer.kernel_regularizer = tf.keras.regularizers.L2(rate)


def _leaf_layers(model: tf.keras.Model):
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def summarize(model: tf.keras.Model) -> dict:
    """Parameter counts and the layer list, as written to model_summary.json."""
    trainable = sum(int(tf.keras.backend.count_params(w)) for w in model.trainable_weights)
    total = sum(int(tf.keras.backend.count_params(w)) for w in model.weights)

    def layers_of(m, prefix=""):
        rows = []
        for layer in m.layers:
            rows.append({"name": prefix + layer.name, "class": type(layer).__name__,
                         "trainable": bool(layer.trainable), "params": int(layer.count_params())
                         if layer.built else 0})
            if isinstance(layer, tf.keras.Model):
                rows.extend(layers_of(layer, prefix + layer.name + "/"))
        return rows

    return {"total_params": total, "trainable_params": trainable, "non_trainable_params": total - trainable,
            "inputs": list(model.input_names), "outputs": list(model.output_names), "layers": layers_of(model)}
