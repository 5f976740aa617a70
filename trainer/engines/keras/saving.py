"""The Keras engine's checkpoints, in the Estimator's format: `model.ckpt-<step>` bundles whose tensors are named
as the Keras weights (`dense/kernel`), the optimizer's state under `training/` and the step as `global_step`,
listed in the `checkpoint` state file. Everything that reads checkpoints (resume, the model_dir checks, the
damaged-checkpoint recovery, keras_model.h5, warm starts) reads both engines' alike.

Written with the SaveV2 op from plain values, so mirrored variables are saved like any other (TensorFlow's
v1 Saver refuses them in eager mode); the state file is updated last, in one atomic write.
"""
import os
from typing import Dict, Optional

import tensorflow as tf
from absl import logging

from trainer.run import checkpoints

OPTIMIZER_PREFIX = "training/"


def model_variables(model: tf.keras.Model) -> Dict[str, tf.Variable]:
    return {w.name.split(":")[0]: w for w in model.weights}


def optimizer_variables(optimizer) -> Dict[str, tf.Variable]:
    """Slots and the iteration count, not the hyperparameters: a changed flag is never overridden on resume; under
    --mixed_precision also the dynamic loss scale and its count of good steps, which `variables()` leaves out
    (wrappers trial B7: a resumed run restarted the scale at 32768 and drifted from the uninterrupted one)."""
    hyper = set(getattr(optimizer, "_hyper", {})) | {"decay", "learning_rate", "lr"}
    found = {OPTIMIZER_PREFIX + v.name.split(":")[0]: v for v in optimizer.variables()
             if v.name.split(":")[0].rsplit("/", 1)[-1] not in hyper}
    state = getattr(optimizer, "_loss_scale", None)
    for name, attribute in (("current_loss_scale", "_current_loss_scale"), ("good_steps", "_counter")):
        variable = getattr(state, attribute, None)
        if isinstance(variable, tf.Variable) or isinstance(variable, tf.distribute.DistributedValues):
            found[f"{OPTIMIZER_PREFIX}loss_scale/{name}"] = variable
    return found


def local_value(variable):
    """A variable's value on this task, without a collective op: a distributed variable's first local component.

    Reading a sync-on-read variable (BatchNormalization's moving statistics) across replicas is an all-reduce; under
    MultiWorkerMirroredStrategy every task would have to join it, and only the chief saves. Its own replica's
    statistics are what the chief saves and every task restores.
    """
    # Careful: a distributed variable answers any attribute it lacks by reading itself (an all-reduce for a
    # sync-on-read one), so nothing is looked up on it but `values`.
    if not isinstance(variable, tf.distribute.DistributedValues) and type(variable).__name__ == "AutoCastVariable":
        variable = variable._variable  # Mixed precision wraps the float32 variable.
    if isinstance(variable, tf.distribute.DistributedValues):
        variable = variable.values[0]
    return tf.convert_to_tensor(variable)


def write_bundle(prefix: str, tensors: Dict[str, object]) -> str:
    tf.io.gfile.makedirs(os.path.dirname(prefix))
    names = sorted(tensors)
    try:
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[local_value(tensors[n]) for n in names])
    except tf.errors.OpError as e:  # Its message names a device, not the file (SRE trial W1): add the file.
        raise type(e)(e.node_def, e.op, f"{e.message} (writing {prefix})") from None
    return prefix


def save(model: tf.keras.Model, step: int, checkpoint_dir: str, keep: int, name: str = "model.ckpt") -> str:
    """Saves `model.ckpt-<step>` (weights, optimizer state, step), makes it the latest, keeps the newest `keep`."""
    tensors = {k: v for k, v in model_variables(model).items()}
    if model.optimizer is not None:
        tensors.update(optimizer_variables(model.optimizer))
    tensors["global_step"] = tf.constant(int(step), tf.int64)
    prefix = write_bundle(os.path.join(checkpoint_dir, f"{name}-{int(step)}"), tensors)
    make_latest(checkpoint_dir, prefix, keep)
    return prefix


def make_latest(checkpoint_dir: str, prefix: str, keep: int) -> None:
    """Points the state file at `prefix` (one atomic write), then removes checkpoints beyond the newest `keep`."""
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
        before = [os.path.basename(p) for p in (state.all_model_checkpoint_paths if state else [])]
    except (tf.errors.OpError, ValueError):
        before = []
    name = os.path.basename(prefix)
    paths = [p for p in before if p != name] + [name]
    dropped, paths = (paths[:-keep], paths[-keep:]) if keep and len(paths) > keep else ([], paths)
    checkpoints.write_state(checkpoint_dir, name, paths)
    for old in dropped:
        for path in tf.io.gfile.glob(os.path.join(checkpoint_dir, old + ".*")):
            try:
                tf.io.gfile.remove(path)
            except tf.errors.OpError:
                pass


def checkpoint_step(prefix: str) -> int:
    return int(tf.train.load_checkpoint(prefix).get_tensor("global_step"))


def restore(model: tf.keras.Model, prefix: str, with_optimizer: bool = True) -> int:
    """Assigns the model's weights (and, when the checkpoint holds it, the optimizer's state) from `prefix`;
    returns its step, which becomes the optimizer's iteration count (the schedule's global step).

    Raises:
        ValueError: a model weight has no tensor of the same name and shape.
    """
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    for name, variable in model_variables(model).items():
        if name not in shapes or tuple(shapes[name]) != tuple(variable.shape):
            raise ValueError(f"checkpoint {prefix} has no tensor {name} of shape {tuple(variable.shape)}")
        variable.assign(reader.get_tensor(name))
    step = int(reader.get_tensor("global_step")) if "global_step" in shapes else 0
    optimizer = model.optimizer
    if optimizer is None:
        return step
    fresh = not any(n.startswith(OPTIMIZER_PREFIX) for n in shapes)
    if with_optimizer and not fresh:
        build_optimizer(model)
        restored = 0
        for name, variable in optimizer_variables(optimizer).items():
            if name in shapes and tuple(shapes[name]) == tuple(variable.shape):
                variable.assign(reader.get_tensor(name))
                restored += 1
        logging.info("restored %s: step %d, %d optimizer variables", os.path.basename(prefix), step, restored)
    else:
        build_optimizer(model)
        logging.info("restored %s: step %d, fresh optimizer state", os.path.basename(prefix), step)
    optimizer.iterations.assign(step)
    return step


def build_optimizer(model: tf.keras.Model) -> None:
    """Creates the optimizer's slots now (Keras makes them at the first step), so a restore can fill them."""
    optimizer = model.optimizer
    with model.distribute_strategy.scope():
        if hasattr(optimizer, "_create_all_weights"):  # Legacy optimizers (what trainer compiles with).
            optimizer._create_all_weights(model.trainable_variables)
        else:
            optimizer.build(model.trainable_variables)


def fresh_phase(checkpoint_dir: str, model: tf.keras.Model, step: int, keep: int) -> str:
    """A phase boundary: `phase.ckpt-<step>` with the latest checkpoint's weights (or the model's, when there is
    none) and no optimizer state, made the latest in one atomic update: a kill leaves the old or the new one."""
    latest: Optional[str] = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        reader = tf.train.load_checkpoint(latest)
        tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
                   if not n.startswith(OPTIMIZER_PREFIX) and n != "global_step"}
    else:
        tensors = dict(model_variables(model))
    tensors["global_step"] = tf.constant(int(step), tf.int64)
    prefix = write_bundle(os.path.join(checkpoint_dir, f"phase.ckpt-{int(step)}"), tensors)
    make_latest(checkpoint_dir, prefix, keep)
    logging.info("new phase at step %d: weights kept, fresh optimizer state (%s)", step, prefix)
    return prefix
