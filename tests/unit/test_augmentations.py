"""The augmentation registry (trainer/augmentations.py) and trainer/data/augment.py: a toy op registered in the test
is accepted by --augment and applied, with draws that repeat for the same seed; a label-mixing op gets the labels."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import augmentations
from trainer.config import parse_augment
from trainer.data.augment import augment_batch
from trainer.errors import UsageError


@pytest.fixture
def toy_ops():
    def invert(images, amount, seed):
        chosen = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < amount
        return tf.where(chosen[:, None, None, None], 255.0 - images, images)

    def swap_halves(images, labels, amount, seed):  # A stand-in for Mixup: mixes images and labels alike.
        return amount * images + (1 - amount) * tf.reverse(images, [0]), \
            amount * labels + (1 - amount) * tf.reverse(labels, [0])

    augmentations.register(augmentations.AugmentOp("invert", 0.5, pixels=invert))
    augmentations.register(augmentations.AugmentOp("swap", 0.7, mixing=swap_halves))
    yield
    for name in ("invert", "swap"):
        augmentations.unregister(name)


IMAGES = tf.constant(np.random.default_rng(0).uniform(0, 255, (8, 6, 6, 3)).astype(np.float32))


def test_a_registered_op_is_a_flag_value_and_is_applied(toy_ops):
    ops = parse_augment("invert:0.99,flip")
    assert ops == (("invert", 0.99), ("flip", 0.0))
    out = augment_batch(IMAGES, ops, tf.constant([1, 2], tf.int64)).numpy()
    again = augment_batch(IMAGES, ops, tf.constant([1, 2], tf.int64)).numpy()
    other = augment_batch(IMAGES, ops, tf.constant([1, 3], tf.int64)).numpy()
    assert np.array_equal(out, again) and not np.array_equal(out, other)  # Seeded: a restart replays the draws.
    inverted = 255.0 - IMAGES.numpy()
    per_image = [np.allclose(o, i) or np.allclose(o, i[:, ::-1]) for o, i in zip(out, inverted)]
    assert sum(per_image) >= 6  # About 99% inverted, each maybe flipped.
    with pytest.raises(UsageError, match="unknown operation 'blur'; choose from: flip, rotate, zoom, randaugment, trivialaugment, mixup, cutmix, invert"):
        parse_augment("blur")


def test_a_mixing_op_mixes_the_labels_too(toy_ops):
    labels = tf.one_hot(tf.range(8) % 2, 2)
    images, mixed = augment_batch(IMAGES, parse_augment("swap"), tf.constant([1, 2], tf.int64), labels=labels)
    assert np.allclose(mixed.numpy().sum(-1), 1.0) and np.allclose(mixed.numpy()[0], [0.7, 0.3])
    assert np.allclose(images.numpy()[0], 0.7 * IMAGES.numpy()[0] + 0.3 * IMAGES.numpy()[7])
    with pytest.raises(ValueError, match="mixes labels"):
        augment_batch(IMAGES, parse_augment("swap"), tf.constant([1, 2], tf.int64))
