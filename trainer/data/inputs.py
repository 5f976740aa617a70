"""tf.data input functions of both engines.

`make_input_fn` returns a closure that builds the pipeline inside the
Estimator's graph. Features are a dict keyed by the model's input names,
labels a dict keyed by its output names. Files and records are decoded in
parallel; work that is the same for every image (channels to 3, resize,
augmentation, label encoding) runs on whole batches.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from trainer import augmentations
from trainer.data import tfrecords
from trainer.data.augment import augment_batch
from trainer.data.sources import Split

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 10_000
# Without the autotuner (the Estimator engine, see `pipeline_options`): fixed parallelism and prefetch depth
# (AUTOTUNE values alone would fall back to defaults without it).
PARALLEL_CALLS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
PREFETCH_BATCHES = 2
# Decoded training images are kept in memory (decoded once, not every epoch) up to this size, as uint8 RGB:
# 3 bytes a pixel (about 7,100 images at 224 px), where float32 took 12 (about 1,780).
CACHE_BYTES = 1 << 30
CACHED_BYTES_PER_PIXEL = 3


def pipeline_options(autotune: bool = False) -> tf.data.Options:
    """Options for the input pipelines of a run: the tf.data autotuner on for an engine whose loop keeps its
    iterators for the run (the Keras engine), off for one that closes a Session per evaluation (the Estimator's).

    The autotuner's background thread sleeps between optimizations for a period doubling
    from 10 ms to 60 s. Destroying the iterator (the Estimator closing a training or
    evaluation Session) joins that thread, which can miss the cancellation and sleep out
    its period: on TF 2.15, 37 s in 5 of 10 closes of a session alive for 45 s (issue 15,
    README "Performance"). Without the autotuner there is no such thread; fixed
    parallelism keeps these pipelines well above the training throughput.
    """
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return options


def encode_labels(labels, label_mode: str, num_classes: int):
    """Integer class ids -> the label tensor `label_mode` trains on."""
    if label_mode == "categorical":
        return tf.one_hot(labels, num_classes)
    if label_mode == "binary":
        return tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
    return tf.cast(labels, tf.int32)


def to_model_images(images, size: int):
    """A batch of images (any channel count, any size) -> float32 [B, size, size, 3]."""
    images = tf.cast(images, tf.float32)
    if images.shape.rank == 3:  # Grayscale stored without a channel axis.
        images = images[..., None]
    channels = images.shape[-1]
    if channels == 1:
        images = tf.tile(images, [1, 1, 1, 3])
    elif channels == 4:
        images = images[..., :3]
    if images.shape[1] != size or images.shape[2] != size:
        images = tf.image.resize(images, [size, size])
    return images


def decode_image(encoded, size: int):
    """Encoded JPEG/PNG/BMP/GIF bytes -> float32 [size, size, 3], pixels in [0, 255].

    The one decoding path of training, evaluation and the serving signature: grayscale,
    palette and RGBA images all become RGB; every image is resized (bilinear) to `size`.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [size, size])


def make_input_fn(split: Split, *, training: bool, batch_size: int, input_names: List[str],
                  output_names: List[str], label_mode: str, num_classes: int,
                  image_size: Optional[int], seed: int = 42, augment: Sequence[Tuple[str, float]] = (),
                  class_names: Sequence[str] = (), resume_step: Optional[Callable[[], int]] = None,
                  autotune: bool = False) -> Callable:
    """Returns an input_fn over one split (the Estimator calls it with params and an input context; the Keras
    engine with neither).

    Args:
        split: the examples (arrays, file paths or TFRecord shards) and their labels.
        training: shuffle, repeat forever and augment; otherwise one pass, in order.
        batch_size: examples per batch (per input pipeline).
        input_names: the model's input layer names (feature keys).
        output_names: the model's output names (label keys).
        label_mode: sparse, categorical or binary.
        num_classes: for one-hot labels.
        image_size: resize images to this square size; None feeds arrays as they are
            (models from --model_fn).
        seed: shuffling and augmentation seed.
        augment: ((op, amount), ...), applied only when training.
        class_names: the vocabulary TFRecord class texts are matched against.
        resume_step: training only: the global step training starts from (read when the input_fn is
            called). The shuffled stream then goes on where the run that saved that step was, instead of
            starting its order again: a restarted run trains on the batches an uninterrupted one would
            (in-memory arrays and image files; TFRecord shards are read in a nondeterministic order anyway).
        autotune: the tf.data autotuner picks the parallelism and prefetch depth (the Keras engine); else fixed
            (the Estimator engine: see `pipeline_options`).
    """
    parallel, prefetch = (AUTOTUNE, AUTOTUNE) if autotune else (PARALLEL_CALLS, PREFETCH_BATCHES)
    augment = tuple(augment) if training else ()

    def input_fn(params=None, input_context=None):
        # The TPU engine passes the per-shard batch in params and needs static shapes.
        tpu_batch = (params or {}).get("batch_size")
        batch, drop_remainder = (tpu_batch, True) if tpu_batch else (batch_size, training)
        ds = _examples(split, input_names, output_names, training, class_names, input_context, num_classes)
        encoded = split.paths is not None or split.shards is not None
        key, is_path = input_names[0], split.paths is not None

        def decode(f, y):
            return {key: decode_image(tf.io.read_file(f[key]) if is_path else f[key], image_size)}, y

        def decode_to_cache(f, y):  # uint8, rounded: within half a grey level of what `decode` gives.
            return {key: tf.cast(tf.round(tf.clip_by_value(decode(f, y)[0][key], 0.0, 255.0)), tf.uint8)}, y

        # Training on images that fit in memory: decode once, cache, then shuffle every epoch.
        cache = training and encoded and split.known_size and \
            len(split) * image_size ** 2 * CACHED_BYTES_PER_PIXEL <= CACHE_BYTES
        if cache:
            ds = ds.map(decode_to_cache, num_parallel_calls=parallel).cache()
        start = 0
        if training:
            buffer = min(len(split), SHUFFLE_BUFFER) if split.known_size else SHUFFLE_BUFFER
            ds = ds.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True).repeat()
            if resume_step is not None and split.shards is None:
                start = int(resume_step() or 0)  # Skipped before decoding: paths or cached arrays, cheap.
                ds = ds.skip(start * batch)
        if encoded and not cache:
            ds = ds.map(decode, num_parallel_calls=parallel, deterministic=not training)
        ds = ds.batch(batch, drop_remainder=drop_remainder).enumerate(start=start)
        pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
        ds = ds.map(lambda i, batch: _finish_batch(*batch, label_mode, num_classes, image_size, output_names,
                                                   augment, tf.stack([tf.cast(seed, tf.int64) * 1000 + pipeline_id, i])),
                    num_parallel_calls=parallel)
        return ds.prefetch(prefetch).with_options(pipeline_options(autotune))

    return input_fn


def _examples(split: Split, input_names, output_names, training, class_names, input_context,
              num_classes) -> tf.data.Dataset:
    """(features, labels) of single examples, before any decoding."""
    if split.shards is not None:
        records = tfrecords.records(split.shards, split.part, split.fraction, deterministic=not training,
                                    input_context=input_context)
        ds = records.map(lambda r: tfrecords.parse(r, class_names), num_parallel_calls=AUTOTUNE,
                         deterministic=not training)
        # Records whose text is not in the vocabulary (-1), or whose id is past it, are dropped:
        # TFRecords at scale are not scanned up front when --labels_file is given.
        ds = ds.filter(lambda encoded, label: (label >= 0) & (label < num_classes))
        return ds.map(lambda encoded, label: ({input_names[0]: encoded}, {output_names[0]: label}))
    labels: Dict[str, np.ndarray] = {}
    if split.y:
        labels.update({k: v for k, v in split.y.items() if k in output_names})
    if not labels or len(output_names) == 1:
        labels = {output_names[0]: split.labels}
    if split.paths is not None:
        features = {input_names[0]: np.array(split.paths)}
    elif set(split.x) == {"x"}:
        features = {input_names[0]: split.x["x"]}
    else:
        features = {name: split.x[name] for name in input_names}
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def _finish_batch(features, labels, label_mode, num_classes, image_size, output_names, augment, seed):
    if len(output_names) == 1:
        labels = {k: encode_labels(v, label_mode, num_classes) for k, v in labels.items()}
    if image_size:
        features = {k: to_model_images(v, image_size) for k, v in features.items()}
        if augmentations.mixes_labels(augment):
            # Mixup/CutMix: one image input, one output (trainer/config.py checks); the labels become soft targets
            # (sparse ones one-hot first), which the recipe's loss takes (trainer/model/models.py make_loss).
            (key, images), = features.items()
            (name, target), = labels.items()
            if label_mode == "sparse":
                target = tf.one_hot(target, num_classes)
            images, target = augment_batch(images, augment, seed, labels=target)
            features, labels = {key: images}, {name: target}
        elif augment:
            features = {k: augment_batch(v, augment, seed) for k, v in features.items()}
    else:
        features = {k: tf.cast(v, tf.float32) for k, v in features.items()}
    return features, labels
