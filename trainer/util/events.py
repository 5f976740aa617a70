"""Scalars out of TensorBoard event files (training loss, evaluation metrics), local or gs://."""
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

Series = List[Tuple[int, float]]  # (step, value), sorted by step, one value per step (the last written).


def read_scalars(folder: str) -> Dict[str, Series]:
    """Every scalar tag in the event files directly in `folder` (not its sub-folders)."""
    by_tag: Dict[str, Dict[int, float]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(folder, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = _number(value)
                    if number is not None:
                        by_tag.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:  # The file of a running (or killed) run ends mid-record.
            continue
    return {tag: sorted(values.items()) for tag, values in by_tag.items()}


def _number(value):
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and not value.tensor.tensor_shape.dim and value.tensor.dtype in (
            tf.float32.as_datatype_enum, tf.float64.as_datatype_enum):
        try:
            return float(tf.make_ndarray(value.tensor))
        except (ValueError, TypeError):
            return None
    return None


def evaluations(model_dir: str) -> Dict[str, Series]:
    """The evaluation scalars of a run (its `eval/` folder)."""
    return read_scalars(os.path.join(model_dir, "eval"))


def best(series: Series, higher_is_better: bool = True):
    """(step, value) of the best point, or None."""
    if not series:
        return None
    values = np.array([v for _, v in series])
    i = int(values.argmax() if higher_is_better else values.argmin())
    return series[i]


def copy_event_files(source: str, destination: str) -> int:
    """Copies TensorBoard event files (source/ and its eval*/ folders) to `destination`."""
    copied = 0
    for pattern in ("events.out.tfevents.*", "eval*/events.out.tfevents.*"):
        for path in tf.io.gfile.glob(os.path.join(source, pattern)):
            target = os.path.join(destination, os.path.relpath(path, source))
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(path, target, overwrite=True)
            copied += 1
    return copied
