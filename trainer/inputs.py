"""tf.data input functions for the Estimator.

`make_input_fn` returns a closure that builds the pipeline inside the
Estimator's graph. Features are a dict keyed by the model's input names,
labels a dict keyed by its output names. Image preprocessing that is the same
for every pixel layout (channels to 3, resize, float32) runs batched, after
`batch`, so the per-example work is only decoding.
"""
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from trainer.data import Split

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 10_000


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


def decode_image_file(path):
    """Reads and decodes one JPEG/PNG/BMP/GIF file to uint8 [H, W, 3]."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def make_input_fn(split: Split, *, training: bool, batch_size: int, input_names: List[str],
                  output_names: List[str], label_mode: str, num_classes: int,
                  image_size: Optional[int], seed: int = 42) -> Callable:
    """Returns an Estimator input_fn over one split.

    Args:
        split: the examples (arrays or file paths) and their labels.
        training: shuffle and repeat forever; otherwise one pass, in order.
        batch_size: examples per batch.
        input_names: the model's input layer names (feature keys).
        output_names: the model's output names (label keys).
        label_mode: sparse, categorical or binary.
        num_classes: for one-hot labels.
        image_size: resize images to this square size; None feeds arrays as they are
            (models from --model_fn).
        seed: shuffling seed.
    """

    def input_fn(params=None, input_context=None):
        del params
        ds = _examples(split, input_names, output_names)
        if input_context is not None and input_context.num_input_pipelines > 1:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            ds = ds.shuffle(min(len(split), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
            ds = ds.repeat()
        if split.paths is not None:
            ds = ds.map(lambda f, y: ({input_names[0]: decode_image_file(f[input_names[0]])}, y),
                        num_parallel_calls=AUTOTUNE, deterministic=not training)
            # Images differ in size until resized: resize each one before batching.
            ds = ds.map(lambda f, y: ({k: tf.image.resize(v, [image_size, image_size]) for k, v in f.items()}, y),
                        num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(lambda f, y: _finish_batch(f, y, label_mode, num_classes, image_size, output_names),
                    num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    return input_fn


def _examples(split: Split, input_names: List[str], output_names: List[str]) -> tf.data.Dataset:
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
    return tf.data.Dataset.from_tensor_slices((features, labels))


def _finish_batch(features, labels, label_mode, num_classes, image_size, output_names):
    if image_size:
        features = {k: to_model_images(v, image_size) for k, v in features.items()}
    else:
        features = {k: tf.cast(v, tf.float32) for k, v in features.items()}
    if len(output_names) == 1:
        labels = {k: encode_labels(v, label_mode, num_classes) for k, v in labels.items()}
    return features, labels
