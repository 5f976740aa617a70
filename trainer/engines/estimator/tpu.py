"""The TPU path: TPUEstimator with a model_fn around the same Keras model.

TPUStrategy is not supported by Estimator, so TPUs go through
`tf.compat.v1.estimator.tpu.TPUEstimator`. Its model_fn builds the Keras model
in the Estimator's graph (fresh Keras names per graph, so variables are named
exactly as in the eager model) and warm-starts every weight from a checkpoint
of the eager model. With `use_tpu=False` the identical code trains on CPU/GPU,
which is how it is tested here.
"""
import os
import re
from typing import Callable, Sequence

import tensorflow as tf

from trainer.config import Config


def save_initial_weights(model: tf.keras.Model, model_dir: str) -> str:
    """Writes the Keras weights as a name-keyed checkpoint; returns its path."""
    from trainer.outputs import export

    path = os.path.join(model_dir, "keras", "tpu_initial.ckpt")
    if not tf.io.gfile.exists(path + ".index"):
        export.save_weights_checkpoint(model, path)
    return path


def _optimizer(config: Config):
    v1 = tf.compat.v1.train
    if config.optimizer == "sgd":
        return v1.GradientDescentOptimizer(config.learning_rate)
    if config.optimizer == "rmsprop":
        return v1.RMSPropOptimizer(config.learning_rate)
    return v1.AdamOptimizer(config.learning_rate)


def make_model_fn(config: Config, build: Callable[[], tf.keras.Model], class_names: Sequence[str]):
    """A TPUEstimator model_fn: loss, accuracy and predictions of the Keras model `build()` makes."""
    binary = config.label_mode == "binary"
    names = list(class_names)

    def model_fn(features, labels, mode, params):
        model = build()
        training = mode == tf.estimator.ModeKeys.TRAIN
        probabilities = model(features[model.input_names[0]], training=training)
        if binary:
            two = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        else:
            two = probabilities
        predicted = tf.argmax(two, axis=-1)
        if mode == tf.estimator.ModeKeys.PREDICT:
            predictions = {"probabilities": two, "classes": tf.gather(tf.constant(names), predicted)}
            key = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
            return tf.compat.v1.estimator.tpu.TPUEstimatorSpec(
                mode, predictions=predictions,
                export_outputs={key: tf.estimator.export.PredictOutput(predictions)})
        (y,) = labels.values()
        loss = tf.reduce_mean(tf.keras.losses.get(config.resolved_loss)(y, probabilities))
        if config.label_mode == "categorical":
            truth = tf.argmax(y, axis=-1)
        else:
            truth = tf.cast(tf.reshape(y, [-1]), tf.int64)
        if mode == tf.estimator.ModeKeys.EVAL:
            def metric_fn(truth, predicted):
                return {"accuracy": tf.compat.v1.metrics.accuracy(truth, predicted)}
            return tf.compat.v1.estimator.tpu.TPUEstimatorSpec(mode, loss=loss,
                                                               eval_metrics=(metric_fn, [truth, predicted]))
        optimizer = _optimizer(config)
        if params["use_tpu"]:
            optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
        # BatchNorm moving statistics update through the model's update ops.
        with tf.control_dependencies(model.get_updates_for(None) + model.get_updates_for(
                features[model.input_names[0]])):
            train_op = optimizer.minimize(loss, tf.compat.v1.train.get_global_step(),
                                          var_list=model.trainable_variables)
        return tf.compat.v1.estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn


def make_estimator(config: Config, model: tf.keras.Model, build: Callable[[], tf.keras.Model],
                   class_names: Sequence[str], resolver=None) -> tf.estimator.Estimator:
    """The TPUEstimator, warm-started from `model`'s current weights (resolver: None off TPU)."""
    run_config = tf.compat.v1.estimator.tpu.RunConfig(
        cluster=resolver, model_dir=config.checkpoint_dir or config.model_dir, tf_random_seed=config.seed,
        save_checkpoints_steps=config.save_checkpoints_steps, keep_checkpoint_max=config.keep_checkpoint_max,
        tpu_config=tf.compat.v1.estimator.tpu.TPUConfig(iterations_per_loop=config.tpu_iterations_per_loop))
    initial = save_initial_weights(model, config.checkpoint_dir or config.model_dir)
    names = [w.name.split(":")[0] for w in model.weights]
    warm_start = tf.estimator.WarmStartSettings(
        ckpt_to_initialize_from=initial, vars_to_warm_start=[re.escape(n) + r"(:\d+)?$" for n in names])
    return tf.compat.v1.estimator.tpu.TPUEstimator(
        model_fn=make_model_fn(config, build, class_names), config=run_config, use_tpu=config.use_tpu,
        train_batch_size=config.batch_size, eval_batch_size=config.batch_size,
        predict_batch_size=config.batch_size, export_to_tpu=False, warm_start_from=warm_start)
