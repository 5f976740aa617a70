"""Every --augment operation once (a registry, as timm's and Model Garden's augmentations are): its name, whether it
takes an amount and its default, and what it does to a training batch in the graph. trainer/config.py checks
--augment against it before anything is read; trainer/data/augment.py applies the ops a run names, in order, each
with its own stateless draw seeded by (--seed, batch index, its position), so a restart replays the same draws.

Three kinds of op, by what they change:
- `pixels(images, amount, seed) -> images`: per image (flip);
- `geometry(batch, amount, seed) -> {"angles": [B]} or {"scales": [B]}`: the ops of this kind share one projective
  transform, applied after the others (rotate, zoom);
- `mixing(images, labels, amount, seed) -> (images, labels)`: ops that mix examples and so their labels (Mixup,
  CutMix): labels are one-hot or soft [B, k] (a categorical loss takes soft targets as they are). None is
  registered yet; the input pipeline passes labels to `augment_batch` once one is.

TensorFlow is imported inside the ops: the flags are checked (here, from trainer/config.py) without it.
"""
import dataclasses
import math
from typing import Callable, Dict, Optional


@dataclasses.dataclass(frozen=True)
class AugmentOp:
    name: str
    default: Optional[float]  # The amount when none is written; None: the op takes no amount.
    pixels: Optional[Callable] = None
    geometry: Optional[Callable] = None
    mixing: Optional[Callable] = None
    help: str = ""


_OPS: Dict[str, AugmentOp] = {}


def register(op: AugmentOp) -> AugmentOp:
    assert sum(f is not None for f in (op.pixels, op.geometry, op.mixing)) == 1, op.name
    _OPS[op.name] = op
    return op


def unregister(name: str) -> None:
    _OPS.pop(name, None)


def get(name: str) -> Optional[AugmentOp]:
    return _OPS.get(name)


def names():
    return list(_OPS)


def _flip(images, amount, seed):
    import tensorflow as tf

    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _rotate(batch, amount, seed):
    import tensorflow as tf

    limit = amount * 2.0 * math.pi
    return {"angles": tf.random.stateless_uniform([batch], seed, -limit, limit)}


def _zoom(batch, amount, seed):
    import tensorflow as tf

    return {"scales": tf.random.stateless_uniform([batch], seed, 1.0 - amount, 1.0 + amount)}


register(AugmentOp("flip", None, pixels=_flip, help="horizontal, half the images"))
register(AugmentOp("rotate", 0.1, geometry=_rotate, help="up to amount x a full turn either way"))
register(AugmentOp("zoom", 0.1, geometry=_zoom, help="scale in [1 - amount, 1 + amount]"))
