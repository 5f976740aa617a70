"""Training-time image augmentation: flip, rotation, zoom, on batches, in the graph.

Every random draw is stateless and seeded by (--seed, batch index), so a run is
reproducible under `--seed`. Only training input pipelines call this; evaluation
and serving never do.
"""
import math
from typing import Sequence, Tuple

import tensorflow as tf


def augment_batch(images, ops: Sequence[Tuple[str, float]], seed):
    """Augments a float batch [B, H, W, C].

    Args:
        images: the batch, pixels in [0, 255].
        ops: ((name, amount), ...): flip (horizontal, half the images), rotate (up to
            amount x a full turn either way), zoom (scale in [1 - amount, 1 + amount]).
        seed: int tensor of shape [2] for the stateless random ops.
    """
    batch = tf.shape(images)[0]
    height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    angles = tf.zeros([batch])
    scales = tf.ones([batch])
    geometric = False
    for i, (name, amount) in enumerate(ops):
        op_seed = seed + tf.constant([0, 7919 * (i + 1)], seed.dtype)
        if name == "flip":
            flip = tf.random.stateless_uniform([batch], op_seed) < 0.5
            images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
        elif name == "rotate":
            limit = amount * 2.0 * math.pi
            angles = tf.random.stateless_uniform([batch], op_seed, -limit, limit)
            geometric = True
        elif name == "zoom":
            scales = tf.random.stateless_uniform([batch], op_seed, 1.0 - amount, 1.0 + amount)
            geometric = True
    if not geometric:
        return images
    # Output pixel (x, y) samples the input at centre + R(angle) (p - centre) / scale.
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angles) / scales, tf.sin(angles) / scales
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, cx - cx * cos + cy * sin,
                           sin, cos, cy - cx * sin - cy * cos, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
