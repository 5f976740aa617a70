"""Mixup and CutMix (`--augment=mixup:ALPHA`, `cutmix:ALPHA`): each example of a training batch is mixed with its
partner (the example at the mirrored position of the batch, as in timm and TF Model Garden), and so are their
labels, which become soft targets. Every example draws its own mixing weight from Beta(ALPHA, ALPHA) (Model Garden
draws one per example too; timm one per batch by default), with a stateless seed, so a restart replays the draws.

- Mixup (Zhang et al. 2018): image = lam x + (1 - lam) x', labels likewise.
- CutMix (Yun et al. 2019): a box of x' of area (1 - lam) of the image, at a uniform centre and clipped at the
  borders, is pasted into x; the labels are mixed by the area actually pasted (timm's `correct_lam`), not by the
  drawn lam, so a box clipped at a border counts for what it covers.

The weight is drawn as G1 / (G1 + G2) with G1, G2 ~ Gamma(ALPHA) (float64, so that small ALPHA does not underflow
to 0 / 0): that ratio is Beta(ALPHA, ALPHA)-distributed; tests/unit/test_augment_ops.py checks it with a KS test
(Model Garden's first version drew it otherwise and got another distribution: tensorflow/models#13490).
"""
import tensorflow as tf


def beta(shape, alpha: float, seed):
    """Samples of Beta(alpha, alpha), float32, from a stateless seed [2]."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    g1 = tf.random.stateless_gamma(shape, seeds[0], alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    g2 = tf.random.stateless_gamma(shape, seeds[1], alpha=tf.constant(alpha, tf.float64), dtype=tf.float64)
    total = g1 + g2
    return tf.cast(tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5), tf.float32)


def _blend(a, b, weight, rank):
    weight = tf.reshape(weight, [-1] + [1] * (rank - 1))
    return weight * a + (1.0 - weight) * b


def mixup(images, labels, alpha: float, seed):
    """(images, labels) blended with their partners; `labels` one-hot or soft, [B, k] or [B, 1]."""
    lam = beta([tf.shape(images)[0]], alpha, seed)
    partner_images, partner_labels = tf.reverse(images, [0]), tf.reverse(labels, [0])
    return _blend(images, partner_images, lam, 4), _blend(labels, partner_labels, lam, 2)


def cutmix_boxes(batch, height, width, alpha: float, seed):
    """Per example: a [B, H, W] mask of the box pasted in (True inside), the share of the image kept (the labels'
    weight) and the drawn lam (the share kept by a box the borders do not clip, but for rounding)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    lam = beta([batch], alpha, seeds[0])
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = tf.sqrt(1.0 - lam)
    cy = tf.random.stateless_uniform([batch], seeds[1], 0.0, h)
    cx = tf.random.stateless_uniform([batch], seeds[2], 0.0, w)
    y0 = tf.clip_by_value(tf.round(cy - side * h / 2), 0.0, h)
    y1 = tf.clip_by_value(tf.round(cy + side * h / 2), 0.0, h)
    x0 = tf.clip_by_value(tf.round(cx - side * w / 2), 0.0, w)
    x1 = tf.clip_by_value(tf.round(cx + side * w / 2), 0.0, w)
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = (rows >= y0[:, None, None]) & (rows < y1[:, None, None]) & \
        (cols >= x0[:, None, None]) & (cols < x1[:, None, None])
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return inside, kept, lam


def cutmix(images, labels, alpha: float, seed):
    """(images, labels) with a box of each partner pasted in; labels mixed by the area pasted."""
    shape = tf.shape(images)
    inside, kept, _ = cutmix_boxes(shape[0], shape[1], shape[2], alpha, seed)
    mixed = tf.where(inside[..., None], tf.reverse(images, [0]), images)
    return mixed, _blend(labels, tf.reverse(labels, [0]), kept, 2)
