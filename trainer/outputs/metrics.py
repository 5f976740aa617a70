"""Evaluation metrics beyond accuracy and loss.

Two places compute them, from the same definitions:
- the engine adds streaming scalars to each evaluation (`top_k_accuracy`, `macro_f1`,
  `auc` for binary models; trainer.engines.estimator.metrics), so each evaluation
  writes them to TensorBoard and exporters, early stopping and hypertune see them;
- `from_predictions` computes the full set for eval_metrics.json from the final
  model's probabilities on the whole evaluation split: the scalars, `per_class`
  precision/recall/F1/support and the `confusion_matrix`.
Each evaluation also keeps, in this process, every example's true and predicted class and its
probability (`collected`): report.html's figures and thumbnails come from the evaluation of the
served model, with no second pass over the validation split.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from trainer.data import record_faults
from trainer import metric_registry


# Each evaluation's per-example results in this process, {(model_dir, global_step): (labels, predicted,
# confidence)}: the report of the served model's evaluation needs no second pass over the validation split.
_COLLECTED: Dict[Tuple[str, int], Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def collected(model_dir: str, step: int):
    """The evaluation at `step` of this process, as `trainer.outputs.predictions.Predictions` (None when none ran)."""
    from trainer.outputs.predictions import Predictions

    found = _COLLECTED.get((str(model_dir).rstrip("/"), int(step)))
    if found is None:
        return None
    labels, predicted, confidence = found
    return Predictions(labels.astype(np.int64), top=predicted.astype(np.int64), top_probability=confidence)


def keep_evaluation(model_dir: str, step: int, labels, predicted, confidence) -> None:
    """Keeps one evaluation's per-example results (an engine calls it at the end of each evaluation)."""
    _COLLECTED[(str(model_dir).rstrip("/"), int(step))] = (labels, predicted, confidence)


def forget_collected(model_dir: Optional[str] = None) -> None:
    """Forgets the collected evaluations of one run (all of them without `model_dir`)."""
    keep_collected(model_dir, ()) if model_dir is not None else _COLLECTED.clear()


def keep_collected(model_dir: str, steps) -> None:
    """Forgets this run's collected evaluations other than at `steps` (the latest and the best)."""
    key_dir, keep = str(model_dir).rstrip("/"), {int(s) for s in steps if s is not None}
    for key in [k for k in _COLLECTED if k[0] == key_dir and k[1] not in keep]:
        del _COLLECTED[key]


def available(num_classes: int, label_mode: str, top_k: int) -> List[str]:
    """The scalar metrics a run with these classes reports (trainer.metric_registry)."""
    return metric_registry.available(num_classes, label_mode, top_k)


def from_confusion(matrix, class_names: Sequence[str]) -> Dict:
    """`per_class` precision/recall/F1/support and the labelled `confusion_matrix` from counts [true, predicted]."""
    matrix = np.asarray(matrix).round().astype(np.int64)
    k = len(class_names)
    tp = np.diag(matrix).astype(float)
    predicted_count, support = matrix.sum(0), matrix.sum(1)
    precision = np.divide(tp, predicted_count, out=np.zeros(k), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    return {
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": {"labels": list(class_names), "matrix": matrix.tolist()},
    }


def from_predictions(probabilities: np.ndarray, true_ids: np.ndarray, class_names: Sequence[str],
                     top_k: int = 5, binary: bool = False) -> Dict:
    """Metrics over a whole split from class probabilities [N, k] (binary: [N, 1] or [N, 2]): every registered
    metric the run reports (trainer.metric_registry) but the loss, `per_class` and `confusion_matrix`."""
    probabilities = np.asarray(probabilities, np.float64)
    if binary and probabilities.shape[-1] == 1:
        probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=-1)
    k = len(class_names)
    true_ids = np.asarray(true_ids).reshape(-1).astype(int)
    matrix = np.zeros((k, k), np.int64)
    np.add.at(matrix, (true_ids, probabilities.argmax(-1)), 1)
    out = {}
    for name in metric_registry.available(k, "binary" if binary else "categorical", top_k):
        metric = metric_registry.get(name)
        if metric.from_confusion is not None:
            out[name] = float(metric.from_confusion(matrix))
        elif metric.from_scores is not None:
            value = metric.from_scores(probabilities, true_ids, top_k)
            out[name] = None if value is None else float(value)
    if "top_k_accuracy" in out:
        out["top_k"] = top_k
    out.update(from_confusion(matrix, class_names))
    return out


def predict_split(model: tf.keras.Model, input_fn, label_mode: str):
    """Runs a Keras model over an evaluation input_fn: (probabilities [N, k], true class ids [N])."""
    probabilities, ids = [], []
    for features, labels in input_fn():
        label = next(iter(labels.values())) if isinstance(labels, dict) else labels
        probabilities.append(model(features, training=False).numpy())
        label = label.numpy()
        ids.append(label.argmax(-1) if label_mode == "categorical" else label.reshape(-1))
    if not probabilities:
        return np.zeros((0, 1)), np.zeros(0, int)
    return np.concatenate(probabilities), np.concatenate(ids).astype(int)


# Bad records left out reorder the evaluation input: the kept per-example results no longer line up with it.
record_faults.on_skip(forget_collected)
