"""A phase boundary under the Estimator: the latest checkpoint rewritten with a fresh optimizer state."""
import os
from typing import Callable

import tensorflow as tf
from absl import logging

from trainer.model import ema


def restart_optimizer_state(model_fn: Callable, run_config, model: tf.keras.Model, input_fn: Callable,
                            checkpoint_dir: str, step: int) -> str:
    """Rewrites the latest checkpoint for a new phase: weights kept, optimizer state fresh.

    The new phase's training graph is built once (its model_fn over placeholders shaped like its
    input); every variable that is a model weight (or the global step) takes the checkpoint's
    value (or, when the checkpoint lacks it, the Keras model's), everything else (optimizer slots
    and hyperparameters) its initial value. The result is saved as `phase.ckpt-<step>` and made
    the latest checkpoint in one atomic update of the state file, so a kill at any moment leaves
    either the old or the new latest checkpoint.
    """
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    reader = tf.train.load_checkpoint(latest) if latest else None
    saved = reader.get_variable_to_shape_map() if reader else {}
    keras_values = {w.name.split(":")[0]: w.numpy() for w in model.weights}
    graph = tf.Graph()
    with graph.as_default():
        spec = input_fn().element_spec
        features, labels = tf.nest.map_structure(
            lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), spec)
        model_fn(features, labels, tf.estimator.ModeKeys.TRAIN, run_config)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        # Under MirroredStrategy each replica has its own optimizer slots, saved as `<slot>/replica_<k>`:
        # fresh ones are copies of the first replica's initial values (restore ignores keys it does not need).
        strategy = getattr(run_config, "train_distribute", None)
        replicas = getattr(strategy, "num_replicas_in_sync", 1) if strategy is not None else 1
        for name, variable in list(variables.items()):
            if name in keras_values or name == "global_step":
                continue
            for k in range(1, replicas):
                variables[f"{name}/replica_{k}"] = tf.compat.v1.Variable(
                    variable.initial_value, trainable=False, name=f"{name}/replica_{k}".replace("/", "_"))
        init = tf.compat.v1.global_variables_initializer()
        saver = tf.compat.v1.train.Saver(var_list=variables, sharded=True)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(init)
            for name, variable in variables.items():
                if name in saved and (name in keras_values or name == "global_step"):
                    variable.load(reader.get_tensor(name), session)
                elif name in keras_values:
                    variable.load(keras_values[name], session)
            # --ema_decay: each average starts as the phase's starting weights (trainer/model/ema.py).
            for weight, slot in ema.average_names(variables, keras_values).items():
                for name in [slot] + [f"{slot}/replica_{k}" for k in range(1, replicas)]:
                    variables[name].load(variables[weight].eval(session), session)
            if "global_step" in variables:
                variables["global_step"].load(step, session)
            path = saver.save(session, os.path.join(checkpoint_dir, "phase.ckpt"), global_step=step,
                              write_meta_graph=False)
    kept = sum(1 for n in variables if n in saved and n in keras_values)  # noqa: F841 - logged below.
    logging.info("new phase at step %d: %d weights kept, %d optimizer variables fresh (%s)", step, kept,
                 sum(1 for n in variables if n not in keras_values and n != "global_step"), path)
    return path
