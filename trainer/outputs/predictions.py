"""Predictions on the evaluation split, and the numbers made from them.

Used at each evaluation (the confusion matrix in TensorBoard) and by the report
(confusion matrix, per-class precision/recall/F1, worst-misclassified images),
which eval_metrics.json does not hold. The Keras model is run eagerly; callers
inside the Estimator's graph context use `in_eager_thread`.
"""
import dataclasses
import os
import threading
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from trainer.data import sources as data_lib
from trainer.outputs import export
from trainer.data import inputs
from trainer.model import models
from trainer.config import Config


@dataclasses.dataclass
class Predictions:
    labels: np.ndarray  # [N] true class ids.
    probabilities: Optional[np.ndarray] = None  # [N, classes]; None when only the top class was kept:
    top: Optional[np.ndarray] = None  # [N] predicted class ids, then,
    top_probability: Optional[np.ndarray] = None  # [N] and their probabilities.

    @property
    def predicted(self) -> np.ndarray:
        return self.top if self.top is not None else self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """[N] the probability of each predicted class."""
        if self.top_probability is not None:
            return self.top_probability
        return self.probabilities[np.arange(len(self.labels)), self.predicted]


def predict(model: tf.keras.Model, input_fn: Callable, label_mode: str, steps: Optional[int] = None
            ) -> Optional[Predictions]:
    """Runs a single-output classifier over `input_fn`'s batches (None for multi-output models)."""
    if len(model.outputs) != 1:
        return None
    labels, probabilities = [], []
    for i, (features, target) in enumerate(input_fn()):
        if steps is not None and i >= steps:
            break
        out = model(features, training=False).numpy().astype(np.float64)
        if label_mode == "binary":
            out = np.concatenate([1.0 - out, out], axis=1)
        labels.append(class_ids_of(target, label_mode))
        probabilities.append(out)
    if not labels:
        return None
    return Predictions(np.concatenate(labels), np.concatenate(probabilities))


def class_ids_of(target, label_mode: str) -> np.ndarray:
    target = next(iter(target.values())).numpy() if isinstance(target, dict) else target.numpy()
    if label_mode == "binary":
        target = (target.reshape(-1) > 0.5).astype(np.int64)
    elif label_mode == "categorical":
        target = target.argmax(axis=1)
    return target.reshape(-1).astype(np.int64)


def confusion_matrix(p: Predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (p.labels, p.predicted), 1)
    return matrix


def per_class(matrix: np.ndarray) -> List[dict]:
    """precision, recall, f1 and support of each class (0 where undefined)."""
    rows = []
    for i in range(len(matrix)):
        tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": float(precision), "recall": float(recall), "f1": float(f1),
                     "support": int(support)})
    return rows


def in_eager_thread(fn: Callable, *args):
    """Runs `fn` in a fresh thread, where TensorFlow executes eagerly, even when called from inside
    a graph context (an Estimator exporter or listener); returns its result, re-raises its error."""
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller.
            result["error"] = e

    thread = threading.Thread(target=target, name="eager-predictions")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def validation_input(config: Config, model: tf.keras.Model, dataset: data_lib.Dataset) -> Callable:
    """The evaluation input_fn of a run (as trainer.stages.experiment builds it)."""
    return inputs.make_input_fn(
        dataset.validation, training=False, batch_size=config.batch_size, input_names=model.input_names,
        output_names=model.output_names, label_mode=config.label_mode, num_classes=dataset.num_classes,
        image_size=None if config.model_fn else model.input_shape[1], seed=config.seed,
        class_names=dataset.class_names)


def config_from_run_info(info: dict) -> Config:
    """The Config a run was started with, from run_info.json's resolved flags."""
    return Config.from_dict(info["flags"])


def load_run_model(model_dir: str, config: Config, num_classes: int, image_shape) -> Optional[tf.keras.Model]:
    """The run's model: keras_model.h5 when the run finished, else rebuilt from its latest checkpoint."""
    from trainer.model.keras_files import load_keras

    keras_h5 = os.path.join(model_dir, "keras_model.h5")
    if tf.io.gfile.exists(keras_h5):
        return load_keras(keras_h5)
    checkpoint = tf.train.latest_checkpoint(config.checkpoint_dir or model_dir)
    if not checkpoint or config.cache_features:
        return None
    tf.keras.backend.clear_session()  # Same layer names as in training, so the checkpoint's names match.
    model = models.build_model(dataclasses.replace(config, weights="none"), num_classes, image_shape)
    export.restore_from_checkpoint(model, checkpoint)
    return model


def images_at(input_fn: Callable, indices) -> dict:
    """The model-input images (float [size, size, 3] in [0, 255]) at these positions of `input_fn`'s
    single-image batches, by position (for thumbnails)."""
    wanted, found, offset = set(int(i) for i in indices), {}, 0
    if not wanted:
        return found
    for features, _ in input_fn():
        batch = next(iter(features.values())).numpy() if isinstance(features, dict) else features.numpy()
        for k in range(len(batch)):
            if offset + k in wanted:
                found[offset + k] = batch[k]
        offset += len(batch)
        if len(found) == len(wanted):
            break
    return found
