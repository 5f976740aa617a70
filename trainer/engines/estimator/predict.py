"""Predicting a split with an Estimator (a cached run's head, whose Keras model the Estimator made uncallable)."""
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from trainer.outputs.predictions import Predictions, class_ids_of


def predict_with_estimator(estimator: tf.estimator.Estimator, input_fn: Callable, label_mode: str,
                           checkpoint_path: str, steps: Optional[int] = None) -> Optional[Predictions]:
    """`predict` through the Estimator of a single-output classifier (`export.with_class_names`), for a Keras
    model model_to_estimator has made uncallable; `checkpoint_path` holds the weights to predict with."""
    labels = []
    for i, (_, target) in enumerate(input_fn()):
        if steps is not None and i >= steps:
            break
        labels.append(class_ids_of(target, label_mode))
    probabilities = []
    for batch in estimator.predict(input_fn, predict_keys=["probabilities"], checkpoint_path=checkpoint_path,
                                   yield_single_examples=False):
        probabilities.append(batch["probabilities"].astype(np.float64))
        if len(probabilities) == len(labels):
            break
    if not labels:
        return None
    return Predictions(np.concatenate(labels), np.concatenate(probabilities))
