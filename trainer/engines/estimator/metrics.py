"""The Estimator's evaluation metrics beyond accuracy and loss (streaming v1 metrics: top-k accuracy, macro F1,
AUC, the confusion matrix), and the hook that keeps each example's result for the report
(trainer.outputs.metrics.collected)."""
import numpy as np
import tensorflow as tf

from trainer.errors import UsageError
from trainer import metric_registry
from trainer.outputs.metrics import keep_evaluation


def _true_ids(labels, num_classes: int, label_mode: str):
    if label_mode == "categorical":
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(labels, [-1]), tf.int32)



def _streaming_confusion(true_ids, predicted_ids, num_classes: int):
    """(value, update) of a confusion matrix accumulated over an evaluation (a local variable)."""
    total = tf.compat.v1.get_local_variable(
        "trainer_confusion_matrix", shape=[num_classes, num_classes], dtype=tf.float64,
        initializer=tf.compat.v1.zeros_initializer(), collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES,
                                                                  tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    batch = tf.math.confusion_matrix(true_ids, predicted_ids, num_classes=num_classes, dtype=tf.float64)
    return total, tf.compat.v1.assign_add(total, batch)



def _streaming_auc(true_ids, probabilities, scores, top_k):
    return tf.compat.v1.metrics.auc(true_ids, scores, num_thresholds=500)


def _streaming_top_k(true_ids, probabilities, scores, top_k):
    return tf.compat.v1.metrics.mean(tf.cast(tf.math.in_top_k(true_ids, probabilities, top_k), tf.float32))


# The registry's metrics computed from scores, as streaming v1 metrics (those from the confusion matrix need none).
STREAMING = {"auc": _streaming_auc, "top_k_accuracy": _streaming_top_k}


def check_streamable(num_classes: int, label_mode: str, top_k: int) -> None:
    """Every registered metric the run reports has a form this engine's graph can compute."""
    for name in metric_registry.available(num_classes, label_mode, top_k):
        metric = metric_registry.get(name)
        if name not in ("accuracy", "loss") and metric.from_confusion is None and name not in STREAMING:
            raise UsageError(f"the metric {name!r} has no streaming form on --engine=estimator (register one in "
                             "trainer.engines.estimator.metrics.STREAMING, or use --engine=keras)")


def _from_confusion(metric, matrix):
    """A registered metric of the accumulated confusion matrix, computed once when the evaluation reads it."""
    return tf.reshape(tf.numpy_function(lambda m: np.float64(metric.from_confusion(m)), [matrix], tf.float64), [])


def with_eval_metrics(model_fn, num_classes: int, label_mode: str, top_k: int):
    """Wraps a single-output classifier's model_fn: evaluations also report the extra scalars."""

    def wrapped(features, labels, mode, config):
        spec = model_fn(features, labels, mode, config)
        if mode != tf.estimator.ModeKeys.EVAL:
            return spec
        (probabilities,) = spec.predictions.values()
        (label,) = labels.values() if isinstance(labels, dict) else (labels,)
        true_ids = _true_ids(label, num_classes, label_mode)
        if label_mode == "binary":
            scores = tf.reshape(probabilities, [-1])
            predicted = tf.cast(scores > 0.5, tf.int32)
        else:
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        ops = dict(spec.eval_metric_ops or {})
        matrix, update = _streaming_confusion(true_ids, predicted, num_classes)
        scores = tf.reshape(probabilities, [-1]) if label_mode == "binary" else None
        for name in metric_registry.available(num_classes, label_mode, top_k):  # Those Keras's compile has not.
            metric = metric_registry.get(name)
            if name in ops or name == "loss":
                continue
            if metric.from_confusion is not None:
                ops[name] = (_from_confusion(metric, matrix), update)
            elif name in STREAMING:  # Else refused before training (check_streamable).
                ops[name] = STREAMING[name](true_ids, probabilities, scores, top_k)
        # The matrix itself: exporters draw it and eval_metrics.json reports it, with no second pass.
        ops["confusion_matrix"] = (tf.identity(matrix), tf.no_op())
        confidence = tf.where(predicted > 0, scores, 1.0 - scores) if label_mode == "binary" \
            else tf.reduce_max(probabilities, axis=-1)
        hook = _CollectHook(config.model_dir, (true_ids, predicted, tf.cast(confidence, tf.float32)))
        return spec._replace(eval_metric_ops=ops, evaluation_hooks=list(spec.evaluation_hooks or ()) + [hook])

    return wrapped



class _CollectHook(tf.compat.v1.train.SessionRunHook):
    """Keeps every evaluation batch's true class, predicted class and its probability (12 bytes an example)."""

    def __init__(self, model_dir: str, tensors):
        self._key_dir, self._tensors = str(model_dir).rstrip("/"), tensors

    def begin(self):
        self._step_tensor, self._rows = tf.compat.v1.train.get_global_step(), []

    def after_create_session(self, session, coord):
        self._step = int(session.run(self._step_tensor))

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs(self._tensors)

    def after_run(self, run_context, run_values):
        self._rows.append(run_values.results)

    def end(self, session):
        if self._rows:
            keep_evaluation(self._key_dir, self._step, *(
                np.concatenate([np.asarray(r[i]).reshape(-1) for r in self._rows]) for i in range(3)))
