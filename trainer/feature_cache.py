"""--cache_features: run a frozen trunk over the data once, then train only the head.

With the whole trunk frozen and no augmentation, every epoch would push the same
images through the same trunk. Instead the trunk's outputs are computed in one
pass (kept in memory when they fit, else in a .npy file under --model_dir), and
the Estimator trains a head-only model on them. The head's layers are the full
model's own (shared) layers, so its checkpoint names the same variables; after
training, the full model (trunk + trained head) is what is evaluated, exported
and written to keras_model.h5, exactly as in an uncached run.
"""
import os
import shutil
import tempfile
from typing import Callable, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.errors import UsageError

MEMORY_LIMIT_BYTES = 2 << 30  # Beyond this, features go to a file (and tf.data constants stay small).


def check_supported(config, plan, model: tf.keras.Model) -> None:
    if config.augment:
        raise UsageError("--cache_features needs unaugmented training input: drop --augment (augmented images "
                         "give different trunk outputs every epoch)")
    if config.model_fn:
        raise UsageError("--cache_features needs a trunk: it does not apply to --model_fn models")
    if plan.name != "one_device":
        raise UsageError(f"--cache_features runs on one device, not --strategy={plan.name}")
    trunk = find_trunk(model)
    if any(layer.trainable for layer in trunk.layers) and trunk.trainable:
        raise UsageError("--cache_features needs the whole trunk frozen (--freeze=all): with trainable trunk "
                         "layers the features change as training goes")


def find_trunk(model: tf.keras.Model) -> tf.keras.Model:
    nested = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if not nested:
        raise UsageError("--cache_features: this model has no trunk to cache")
    return nested[-1]


def split(model: tf.keras.Model) -> Tuple[tf.keras.Model, tf.keras.Model]:
    """(image -> features, features -> probabilities), sharing the full model's layers."""
    trunk = find_trunk(model)
    features = tf.keras.Model(model.inputs, trunk.get_output_at(-1), name="features")
    head_layers = model.layers[model.layers.index(trunk) + 1:]
    inputs = tf.keras.Input(trunk.output_shape[1:], name="features")
    x = inputs
    for layer in head_layers:
        x = layer(x)
    return features, tf.keras.Model(inputs, x, name="head")


def compute(features_model: tf.keras.Model, input_fn: Callable, path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Runs the trunk over one ordered pass of a split; returns (features, labels)."""
    dataset = input_fn()
    chunks, labels, total = [], [], 0
    memmap = None
    for batch_features, batch_labels in dataset:
        out = features_model(batch_features, training=False).numpy()
        (y,) = batch_labels.values()
        labels.append(y.numpy())
        total += out.nbytes
        if memmap is None and total > MEMORY_LIMIT_BYTES:
            memmap = _FileChunks(path, out.shape[1:])
            for chunk in chunks:
                memmap.append(chunk)
            chunks = []
        if memmap is not None:
            memmap.append(out)
        else:
            chunks.append(out)
    values = memmap.finish() if memmap is not None else np.concatenate(chunks)
    return values, np.concatenate(labels)


class _FileChunks:
    """Appends feature batches to a raw file, then maps it as one read-only array."""

    def __init__(self, path: str, shape):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path, self.shape, self.rows = path, shape, 0
        self.file = open(path + ".raw", "wb")

    def append(self, chunk: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(chunk, np.float32).tobytes())
        self.rows += len(chunk)

    def finish(self) -> np.ndarray:
        self.file.close()
        logging.info("feature cache: %d rows in %s (too large for memory)", self.rows, self.path + ".raw")
        return np.memmap(self.path + ".raw", np.float32, "r", shape=(self.rows, *self.shape))


def make_feature_input_fn(values: np.ndarray, labels: np.ndarray, output_name: str, *, training: bool,
                          batch_size: int, seed: int) -> Callable:
    def input_fn(params=None, input_context=None):
        if isinstance(values, np.memmap):  # Large: read rows from the file instead of embedding them.
            count = len(values)
            ds = tf.data.Dataset.range(count)
            if training:
                ds = ds.shuffle(min(count, 100_000), seed=seed).repeat()
            ds = ds.batch(batch_size, drop_remainder=training)
            ds = ds.map(lambda i: tuple(tf.numpy_function(lambda j: (values[np.sort(j)], labels[np.sort(j)]), [i],
                                                          [tf.float32, tf.as_dtype(labels.dtype)])))
            ds = ds.map(lambda x, y: ({"features": tf.ensure_shape(x, [None, *values.shape[1:]])},
                                      {output_name: y}))
        else:
            ds = tf.data.Dataset.from_tensor_slices(({"features": values}, {output_name: labels}))
            if training:
                ds = ds.shuffle(min(len(values), 100_000), seed=seed).repeat()
            ds = ds.batch(batch_size, drop_remainder=training)
        return ds.prefetch(tf.data.AUTOTUNE)

    return input_fn


def export_full_model(model: tf.keras.Model, make_estimator: Callable, serving_fn, export_base: str) -> str:
    """Exports the full model (current weights) through an Estimator, for the usual serving signature."""
    scratch = tempfile.mkdtemp(prefix="full-model-")
    try:
        estimator = make_estimator(model, tf.estimator.RunConfig(model_dir=scratch))
        # Without a checkpoint of its own, the Estimator exports from its warm-start checkpoint:
        # the Keras weights model_to_estimator just wrote.
        return estimator.export_saved_model(export_base, serving_fn).decode()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
