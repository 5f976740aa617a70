"""Test-time augmentation (`--tta`): the views a model's probabilities are averaged over (fastai's `tta` does 4
augmented views and the plain one; ours are deterministic, so a figure is the same on every run and restart).

- `flip`: the image and its mirror (2 views);
- `flip_crop`: those two, and the central 87.5% of each scaled back to the full size (4 views; a centre crop is
  the zoom-in a trained model saw least of at the borders).

`--tta` applies to the final evaluation (eval_metrics.json `tta`: the plain and the averaged figures of the served
model, side by side) and to `python -m trainer.predict --tta`. Each view costs one more forward pass.
"""
from typing import List

import tensorflow as tf

CROP = 0.875


def count(kind: str) -> int:
    return {"none": 1, "flip": 2, "flip_crop": 4}[kind]


def views(images, kind: str) -> List[tf.Tensor]:
    """[plain, ...the other views] of a float batch [B, H, W, C]; [plain] for `none`."""
    images = tf.cast(images, tf.float32)
    out = [images]
    if kind in ("flip", "flip_crop"):
        out.append(tf.reverse(images, axis=[2]))
    if kind == "flip_crop":
        size = tf.shape(images)[1:3]
        cropped = tf.image.resize(tf.image.central_crop(images, CROP), size)
        out += [cropped, tf.reverse(cropped, axis=[2])]
    return out
