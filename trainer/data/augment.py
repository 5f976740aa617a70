"""Training-time image augmentation: the ops --augment names (trainer/augmentations.py, the registry), applied to
batches in the graph.

Every random draw is stateless and seeded by (--seed, batch index, the op's position), so a run is reproducible
under `--seed` and a restart replays the same draws. Only training input pipelines call this; evaluation and
serving never do.
"""
from typing import Sequence

import tensorflow as tf

from trainer import augmentations


def augment_batch(images, ops: Sequence[tuple], seed, labels=None):
    """Augments a float batch [B, H, W, C] (pixels in [0, 255]).

    Args:
        ops: ((name, amount, ...), ...), names from trainer.augmentations (as trainer.config.parse_augment gives them).
        seed: int tensor of shape [2] for the stateless random ops.
        labels: [B, k] one-hot or soft labels (binary: [B, 1]), for ops that mix examples; then (images, labels) is
            returned.
    """
    batch = tf.shape(images)[0]
    height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    geometry = {"angles": tf.zeros([batch]), "scales": tf.ones([batch])}
    geometric, mixing = False, []
    for i, (name, *amounts) in enumerate(ops):
        op = augmentations.get(name)
        amount = amounts[0] if len(amounts) == 1 else tuple(amounts)
        op_seed = seed + tf.constant([0, 7919 * (i + 1)], seed.dtype)
        if op.pixels is not None:
            images = op.pixels(images, amount, op_seed)
        elif op.geometry is not None:
            geometry.update(op.geometry(batch, amount, op_seed))
            geometric = True
        elif labels is not None:
            mixing.append((op, amount, op_seed))
        else:
            raise ValueError(f"--augment={name} mixes labels: the input pipeline must pass them")
    if geometric:
        images = _transform(images, geometry["angles"], geometry["scales"], height, width)
    if mixing:  # Last: a box CutMix pastes is not rotated away; each example takes one of the mixing ops.
        images, labels = _mix(images, labels, mixing, seed + tf.constant([0, 104729], seed.dtype))
    return images if labels is None else (images, labels)


def _mix(images, labels, mixing, seed):
    labels = tf.cast(labels, tf.float32)
    results = [op.mixing(images, labels, amount, op_seed) for op, amount, op_seed in mixing]
    if len(results) == 1:
        return results[0]
    which = tf.random.stateless_uniform([tf.shape(images)[0]], seed, 0, len(results), dtype=tf.int32)
    mixed_images, mixed_labels = results[0]
    for k, (more_images, more_labels) in enumerate(results[1:], start=1):
        chosen = tf.equal(which, k)
        mixed_images = tf.where(chosen[:, None, None, None], more_images, mixed_images)
        mixed_labels = tf.where(chosen[:, None], more_labels, mixed_labels)
    return mixed_images, mixed_labels


def _transform(images, angles, scales, height, width):
    """Output pixel (x, y) samples the input at centre + R(angle) (p - centre) / scale."""
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, cx - cx * cos + cy * sin,
                           sin, cos, cy - cx * sin - cy * cos, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
