"""--cache_features, for both engines: run a frozen trunk over the data once, then train only the head.

With the whole trunk frozen and no augmentation, every epoch would push the same images through the same trunk.
Instead the trunk's outputs are computed in one pass into raw files under <checkpoint_dir>/feature_cache/ (read back
by tf.data in C++, and kept in memory after the first epoch when they fit), and the engine trains a head-only model
on them through the same training loop as any other run (schedules, class weights, early stopping, phases on
resume). The head's layers are the full model's own (shared) layers, so its checkpoint names the same variables.
Evaluations (during training and the final one) run the head on the cached validation features: the same numbers,
per-class figures included, as the full model on the images, without a second pass of the trunk. Every export
(best, latest, final) and keras_model.h5 are the full model (trunk + trained head), exactly as in an uncached run;
how each engine exports it is its own (trainer.engines.estimator.feature_cache, trainer.engines.keras.engine).
"""
import dataclasses
import os
import tempfile
import time
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.data.inputs import PREFETCH_BATCHES, pipeline_options
from trainer.errors import UsageError

MEMORY_LIMIT_BYTES = 2 << 30  # Features up to this size are cached in memory after the first read.


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


def check_checkpoint_trunk(model: tf.keras.Model, checkpoint: str, model_dir: str) -> None:
    """Refuses to resume from a checkpoint whose trunk differs from the trunk the features would come from.

    A cached run's own checkpoints hold the head only. One written without --cache_features holds the
    trunk too: if that trunk was trained (or came from other weights), the cached features, the exports and
    keras_model.h5 would silently pair the head with another trunk than the one it was trained with.
    """
    reader = tf.train.load_checkpoint(checkpoint)
    saved = reader.get_variable_to_shape_map()
    for weight in find_trunk(model).weights:
        name = weight.name.split(":")[0]
        if name in saved and not np.array_equal(reader.get_tensor(name), weight.numpy()):
            raise UsageError(f"--model_dir={model_dir} holds a checkpoint whose trunk differs from this run's (first: "
                             f"{name}; it was trained, or built from other weights), and --cache_features keeps the "
                             "trunk as built: resume without --cache_features, or use a new --model_dir with "
                             f"--warm_start_from={model_dir}")


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


def make_forward(features_model: tf.keras.Model) -> Callable:
    """The trunk's forward pass as one graph function, traced once for every split and batch size."""
    # Input pipelines always feed float32 (`inputs.to_model_images`), whatever the model's input dtype.
    signature = [{name: tf.TensorSpec([None, *t.shape[1:]], tf.float32)
                  for name, t in zip(features_model.input_names, features_model.inputs)}]
    return tf.function(lambda x: features_model(x, training=False), input_signature=signature)


def compute(forward: Callable, input_fn: Callable, path: str) -> Tuple[str, tuple, np.ndarray]:
    """Runs the trunk (`make_forward`) over one ordered pass of a split.

    Features are appended to a raw float32 file at `path` as they come (never all in
    memory at once); labels, small, are returned. Returns (path, feature shape, labels).
    """
    tf.io.gfile.makedirs(os.path.dirname(path))
    labels, shape = [], None
    with open(path, "wb") as f:
        for batch_features, batch_labels in input_fn():
            out = forward(batch_features).numpy().astype(np.float32)
            shape = out.shape[1:]
            f.write(out.tobytes())
            (y,) = batch_labels.values()
            labels.append(y.numpy())
    return path, shape, np.concatenate(labels)


def make_feature_input_fn(path: str, shape: tuple, labels: np.ndarray, output_name: str, *, training: bool,
                          batch_size: int, seed: int, resume_step: Optional[Callable[[], int]] = None) -> Callable:
    """Reads cached features from their file in C++ (no Python per step, no large graph constants).

    resume_step: training only: the global step training starts from (read when the input_fn is called), so that
    after a restart the shuffled stream goes on where it was, as the image input's does (a resumed cached run
    then trains on the batches the uninterrupted one did).
    """
    record_bytes = int(np.prod(shape)) * 4

    def input_fn(params=None, input_context=None):
        features = tf.data.FixedLengthRecordDataset(path, record_bytes).map(
            lambda raw: tf.reshape(tf.io.decode_raw(raw, tf.float32), shape))
        ds = tf.data.Dataset.zip((features, tf.data.Dataset.from_tensor_slices(labels)))
        ds = ds.map(lambda x, y: ({"features": x}, {output_name: y}))
        if len(labels) * record_bytes <= MEMORY_LIMIT_BYTES:
            ds = ds.cache()  # In memory from the second epoch on.
        if training:
            ds = ds.shuffle(min(len(labels), 100_000), seed=seed).repeat()
            if resume_step is not None:
                ds = ds.skip(int(resume_step() or 0) * batch_size)
        ds = ds.batch(batch_size, drop_remainder=training).prefetch(PREFETCH_BATCHES)
        return ds.with_options(pipeline_options())  # No autotuner thread to wait for at Session close.

    return input_fn



@dataclasses.dataclass
class Features:
    """What a cached run trains and evaluates instead of the full model on images."""

    head: tf.keras.Model  # features -> probabilities, sharing the full model's layers.
    train_input: Callable  # input_fns over the cached features.
    eval_input: Callable


def compute_all(config, model: tf.keras.Model, dataset, make_input: Callable, run_info: dict,
                resume_step: Callable[[], int]) -> Features:
    """Runs the trunk once over both splits (into files under <checkpoint_dir>/feature_cache).

    Args:
        make_input: (split, training) -> the run's image input_fn.
        resume_step: () -> the step training resumes from (the cached training stream goes on from there).
    """
    started = time.time()
    features_model, head = split(model)
    forward = make_forward(features_model)  # Traced once for both splits.
    # Raw feature files want a local disk (under --model_dir when it is local).
    cache_dir = (os.path.join(config.checkpoint_dir, "feature_cache") if "://" not in config.checkpoint_dir
                 else tempfile.mkdtemp(prefix="feature-cache-"))
    train_file, shape, train_y = compute(forward, make_input(dataset.train, False),
                                         os.path.join(cache_dir, "train.f32"))
    val_file, _, val_y = compute(forward, make_input(dataset.validation, False),
                                 os.path.join(cache_dir, "validation.f32"))
    run_info["feature_cache"] = {"seconds": round(time.time() - started, 1), "shape": list(shape),
                                 "train_examples": len(train_y), "file": train_file}
    logging.info("feature cache: %d x %s training features in %.1f s", len(train_y), shape, time.time() - started)
    output = model.output_names[0]
    return Features(
        head,
        make_feature_input_fn(train_file, shape, train_y, output, training=True, batch_size=config.batch_size,
                              seed=config.seed, resume_step=resume_step),
        make_feature_input_fn(val_file, shape, val_y, output, training=False, batch_size=config.batch_size,
                              seed=config.seed))
