"""Every --augment operation once (a registry, as timm's and Model Garden's augmentations are): its name, whether it
takes an amount and its default, and what it does to a training batch in the graph. trainer/config.py checks
--augment against it before anything is read; trainer/data/augment.py applies the ops a run names, in order, each
with its own stateless draw seeded by (--seed, batch index, its position), so a restart replays the same draws.

Three kinds of op, by what they change:
- `pixels(images, amount, seed) -> images`: per image (flip);
- `geometry(batch, amount, seed) -> {"angles": [B]} or {"scales": [B]}`: the ops of this kind share one projective
  transform, applied after the others (rotate, zoom);
- `mixing(images, labels, amount, seed) -> (images, labels)`: ops that mix examples and so their labels (Mixup,
  CutMix): labels are one-hot or soft [B, k] (binary: [B, 1]), and come back soft. They run after every other op;
  when several are given, each example takes one of them, with equal chances (timm's switch probability 0.5).

An op takes no amount (`flip`), one (`rotate:0.1`; `default` and, unless `amounts` says otherwise, a fraction in
(0, 1)) or several (`randaugment:2:9`: `amounts`, each with its bounds); the function then gets them as a tuple.

TensorFlow is imported inside the ops: the flags are checked (here, from trainer/config.py) without it. The
larger ops live beside this file: trainer/augment_policies.py (RandAugment, TrivialAugment) and
trainer/augment_mixing.py (Mixup, CutMix).
"""
import dataclasses
import math
from typing import Callable, Dict, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Amount:
    """One number an op takes after its name: its default and the range it must lie in."""
    name: str
    default: float
    low: float
    high: float
    integer: bool = False
    low_included: bool = False
    high_included: bool = False

    def check(self, value: float) -> Optional[str]:
        """None if `value` is allowed, else what is wrong (for an `error:` line)."""
        if self.integer and value != int(value):
            return f"a whole number for {self.name}"
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        if above and below:
            return None
        left, right = "[" if self.low_included else "(", "]" if self.high_included else ")"
        return f"{self.name} in {left}{self.low:g}, {self.high:g}{right}"


FRACTION = (Amount("the amount", 0.0, 0.0, 1.0),)  # Bounds of a one-amount op that names none of its own.


@dataclasses.dataclass(frozen=True)
class AugmentOp:
    name: str
    default: Optional[float]  # The amount when none is written; None: the op takes no amount.
    pixels: Optional[Callable] = None
    geometry: Optional[Callable] = None
    mixing: Optional[Callable] = None
    help: str = ""
    amounts: Tuple[Amount, ...] = ()  # Its numbers, with their bounds; () with a default: one fraction.

    def spec(self) -> Tuple[Amount, ...]:
        """The numbers the op takes after its name: () for none."""
        if self.amounts:
            return self.amounts
        if self.default is None:
            return ()
        return (dataclasses.replace(FRACTION[0], default=self.default),)


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


def _randaugment(images, amounts, seed):
    from trainer import augment_policies

    layers, magnitude = amounts
    return augment_policies.randaugment(images, int(layers), magnitude, seed)


def _trivialaugment(images, amount, seed):
    from trainer import augment_policies

    return augment_policies.trivialaugment(images, seed)


def _mixup(images, labels, alpha, seed):
    from trainer import augment_mixing

    return augment_mixing.mixup(images, labels, alpha, seed)


def _cutmix(images, labels, alpha, seed):
    from trainer import augment_mixing

    return augment_mixing.cutmix(images, labels, alpha, seed)


register(AugmentOp("randaugment", 2.0, pixels=_randaugment,
                   help="N:M, N ops per image drawn from 14, at magnitude M of 10 (timm, Model Garden: 2:9)",
                   amounts=(Amount("N (ops per image)", 2, 1, 14, integer=True, low_included=True, high_included=True),
                            Amount("M (magnitude)", 9, 0, 10, low_included=True, high_included=True))))
register(AugmentOp("trivialaugment", None, pixels=_trivialaugment,
                   help="one op per image, drawn from 14 and the identity, at a uniform magnitude (TrivialAugment Wide)"))
register(AugmentOp("mixup", 0.2, mixing=_mixup, help="ALPHA: each example blended with another, weight ~ Beta(ALPHA, ALPHA)",
                   amounts=(Amount("ALPHA", 0.2, 0, 100),)))
register(AugmentOp("cutmix", 1.0, mixing=_cutmix, help="ALPHA: a box of another example pasted in, its area ~ Beta(ALPHA, ALPHA)",
                   amounts=(Amount("ALPHA", 1.0, 0, 100),)))


def mixes_labels(ops) -> bool:
    """Whether parsed --augment ops ((name, amount...), ...) mix examples, so that training labels are soft."""
    return any(get(op[0]) is not None and get(op[0]).mixing is not None for op in ops)
