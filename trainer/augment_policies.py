"""RandAugment (`--augment=randaugment:N:M`, Cubuk et al. 2020) and TrivialAugment Wide (`--augment=trivialaugment`,
Mueller & Hutter 2021) as batched graph ops: tf-keras has neither layer, and the input pipeline augments whole
batches (trainer/data/augment.py).

Every image draws its own ops: RandAugment N times one of the 14 ops below at the magnitude M/10 of each op's
range, TrivialAugment once one of those 14 or the identity at a magnitude uniform in [0, 1] of the wider ranges.
Each op's direction (a rotation left or right, brighter or darker) is drawn too. Draws are stateless, seeded per
batch, so a restart replays them.

The ops and ranges follow timm's `rand_augment_transform` and torchvision's TrivialAugmentWide (geometric ops about
the image centre, grey fill 128; Invert left out, as TrivialAugment Wide leaves it out). All geometric ops of one
layer are one projective transform per image; every colour op is computed for the batch and each image keeps the
one it drew (cheap elementwise work next to the model's).
"""
import math

import tensorflow as tf

OPS = ("autocontrast", "equalize", "rotate", "posterize", "solarize", "solarize_add", "color", "contrast",
       "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
# The most each op does at magnitude 1: RandAugment's (timm) and TrivialAugment Wide's (torchvision).
RANGES = {
    "randaugment": {"rotate": 30.0, "shear": 0.3, "translate": 0.45, "enhance": 0.9, "posterize_bits": 4,
                    "solarize_add": 110.0},
    "trivialaugment": {"rotate": 135.0, "shear": 0.99, "translate": 32 / 224, "enhance": 0.99, "posterize_bits": 6,
                       "solarize_add": 110.0},
}
FILL = 128.0


def randaugment(images, layers: int, magnitude: float, seed):
    """N layers, each one op per image out of OPS, all at magnitude M (of 10)."""
    for which, level in randaugment_draws(tf.shape(images)[0], layers, magnitude, seed):
        images = apply(images, which, level, RANGES["randaugment"])
    return images


def randaugment_draws(batch, layers: int, magnitude: float, seed):
    """[(op index [B], signed level [B]) for each layer]: ops uniform over OPS, level +-M/10."""
    draws = []
    for layer in range(layers):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64) + [0, 31 * layer], 2)
        which = tf.random.stateless_uniform([batch], seeds[0], 0, len(OPS), dtype=tf.int32)
        draws.append((which, tf.fill([batch], magnitude / 10.0) * _sign(batch, seeds[1])))
    return draws


def trivialaugment(images, seed):
    """One op per image out of OPS or the identity (-1), at a uniform magnitude."""
    which, level = trivialaugment_draws(tf.shape(images)[0], seed)
    return apply(images, which, level, RANGES["trivialaugment"])


def trivialaugment_draws(batch, seed):
    """(op index [B], -1 for the identity, and signed level [B], |level| uniform in [0, 1])."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    which = tf.random.stateless_uniform([batch], seeds[0], -1, len(OPS), dtype=tf.int32)
    return which, tf.random.stateless_uniform([batch], seeds[1]) * _sign(batch, seeds[2])


def _sign(batch, seed):
    return tf.where(tf.random.stateless_uniform([batch], seed) < 0.5, -1.0, 1.0)


def apply(images, which, level, ranges):
    """Each image i gets op OPS[which[i]] (none where which[i] is -1) at signed magnitude level[i] in [-1, 1].

    Ops without a direction (posterize, solarize, solarize_add) take |level|.
    """
    images = tf.cast(images, tf.float32)
    chosen = {name: tf.equal(which, i) for i, name in enumerate(OPS)}
    strength = tf.abs(level)
    out = _geometry(images, chosen, level, ranges)
    enhance = 1.0 + level * ranges["enhance"]
    gray = _gray(images)
    colour = {
        "autocontrast": lambda: _autocontrast(images),
        "equalize": lambda: _equalize(images),
        "posterize": lambda: _posterize(images, 8.0 - tf.round(strength * ranges["posterize_bits"])),
        "solarize": lambda: tf.where(images >= _per_image(256.0 - 256.0 * strength), 255.0 - images, images),
        "solarize_add": lambda: tf.where(images < 128.0, tf.minimum(images + _per_image(
            strength * ranges["solarize_add"]), 255.0), images),
        "color": lambda: _blend(gray, images, enhance),
        "contrast": lambda: _blend(tf.reduce_mean(gray, axis=[1, 2, 3], keepdims=True), images, enhance),
        "brightness": lambda: _blend(tf.zeros_like(images), images, enhance),
        "sharpness": lambda: _blend(_smooth(images), images, enhance),
    }
    for name, op in colour.items():
        out = tf.where(chosen[name][:, None, None, None], op(), out)
    return tf.clip_by_value(out, 0.0, 255.0)


def _per_image(values):
    return tf.reshape(values, [-1, 1, 1, 1])


def _blend(base, images, factor):
    """PIL's ImageEnhance: base + factor (images - base); factor 1 leaves the image as it is."""
    return base + _per_image(factor) * (images - base)


def _gray(images):
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _geometry(images, chosen, level, ranges):
    """Rotations, shears and translations of one layer as one projective transform per image (identity where the
    image drew a colour op)."""
    zero = tf.zeros_like(level)
    angle = tf.where(chosen["rotate"], level * ranges["rotate"] * math.pi / 180.0, zero)
    shear_x = tf.where(chosen["shear_x"], level * ranges["shear"], zero)
    shear_y = tf.where(chosen["shear_y"], level * ranges["shear"], zero)
    height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    shift_x = tf.where(chosen["translate_x"], level * ranges["translate"] * width, zero)
    shift_y = tf.where(chosen["translate_y"], level * ranges["translate"] * height, zero)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel p samples the input at c + A (p - c) - shift, A = R(angle) [[1, shear_x], [shear_y, 1]].
    a00, a01 = cos - sin * shear_y, cos * shear_x - sin
    a10, a11 = sin + cos * shear_y, sin * shear_x + cos
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    transforms = tf.stack([a00, a01, cx - a00 * cx - a01 * cy - shift_x,
                           a10, a11, cy - a10 * cx - a11 * cy - shift_y, zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=FILL,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def _autocontrast(images):
    """Each channel stretched to [0, 255] (left as it is where it is flat)."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    span = high - low
    return tf.where(span > 0, (images - low) * 255.0 / tf.where(span > 0, span, 1.0), images)


def _posterize(images, bits):
    step = _per_image(tf.pow(2.0, 8.0 - bits))
    return tf.floor(tf.round(images) / step) * step


def _smooth(images):
    """PIL's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) per channel; as in PIL, the border pixels are
    kept as they are (on an 8x8 image they are 28 of the 64)."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smoothed = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inner = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    return tf.where(inner[None, :, :, None], smoothed, images)


def _equalize(images):
    """PIL's ImageOps.equalize per image and channel: each grey level mapped through the histogram's cumulative
    count (left as it is where one level holds everything)."""
    values = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
    shape = tf.shape(values)
    batch, channels = shape[0], shape[3]
    offsets = (tf.range(batch)[:, None, None, None] * channels + tf.range(channels)) * 256
    ids = values + offsets
    hist = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, batch * channels * 256), [-1, 256])
    last = 255 - tf.argmax(tf.cast(tf.reverse(hist, [1]) > 0, tf.int32), axis=1, output_type=tf.int32)
    total = tf.reduce_sum(hist, axis=1)
    step = (total - tf.gather(hist, last, batch_dims=1)) // 255
    lut = (tf.cumsum(hist, axis=1, exclusive=True) + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
    lut = tf.where(step[:, None] > 0, tf.minimum(lut, 255), tf.range(256)[None, :])
    mapped = tf.gather(tf.reshape(lut, [-1]), ids)
    return tf.cast(mapped, tf.float32)
