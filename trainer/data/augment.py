"""Training-time image augmentation: the ops --augment names (trainer/augmentations.py, the registry), applied to
batches in the graph.

Every random draw is stateless and seeded by (--seed, batch index, the op's position), so a run is reproducible
under `--seed` and a restart replays the same draws. Only training input pipelines call this; evaluation and
serving never do.
"""
from typing import Sequence, Tuple

import tensorflow as tf

from trainer import augmentations


def augment_batch(images, ops: Sequence[Tuple[str, float]], seed, labels=None):
    """Augments a float batch [B, H, W, C] (pixels in [0, 255]).

    Args:
        ops: ((name, amount), ...), names from trainer.augmentations.
        seed: int tensor of shape [2] for the stateless random ops.
        labels: [B, k] one-hot or soft labels, for ops that mix examples; then (images, labels) is returned.
    """
    batch = tf.shape(images)[0]
    height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    geometry = {"angles": tf.zeros([batch]), "scales": tf.ones([batch])}
    geometric = False
    for i, (name, amount) in enumerate(ops):
        op = augmentations.get(name)
        op_seed = seed + tf.constant([0, 7919 * (i + 1)], seed.dtype)
        if op.pixels is not None:
            images = op.pixels(images, amount, op_seed)
        elif op.geometry is not None:
            geometry.update(op.geometry(batch, amount, op_seed))
            geometric = True
        elif labels is not None:
            images, labels = op.mixing(images, labels, amount, op_seed)
        else:
            raise ValueError(f"--augment={name} mixes labels: the input pipeline must pass them")
    if geometric:
        images = _transform(images, geometry["angles"], geometry["scales"], height, width)
    return images if labels is None else (images, labels)


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
