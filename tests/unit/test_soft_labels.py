"""Mixed (soft) labels in the recipe's loss (trainer/model/models.py make_loss): the loss of a Mixup/CutMix target
equals the mix of the two examples' own losses, with --label_smoothing and --class_weight composed, for each label
mode; plain labels are unchanged; the training accuracy reads soft targets."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.config import Config
from trainer.model import models

K = 4
WEIGHTS = [0.5, 2.0, 1.0, 3.0]


def _config(**kw):
    return Config(augment=(("mixup", 0.2),), **kw)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("mode", ["sparse", "categorical"])
def test_a_mixed_target_costs_the_mix_of_both_examples_losses(mode, weights, smoothing):
    rng = np.random.default_rng(0)
    pred = tf.nn.softmax(tf.constant(rng.normal(size=(6, K)), tf.float32))
    a, b = np.array([0, 1, 2, 3, 1, 0]), np.array([3, 3, 0, 1, 1, 2])
    lam = rng.uniform(size=6).astype(np.float32)
    mixed = lam[:, None] * np.eye(K)[a] + (1 - lam[:, None]) * np.eye(K)[b]
    soft_loss = models.make_loss(_config(label_mode=mode, label_smoothing=smoothing), K, weights)
    plain_loss = models.make_loss(Config(label_mode=mode, label_smoothing=smoothing), K, weights)
    ids = (lambda y: tf.constant(y)) if mode == "sparse" else (lambda y: tf.constant(np.eye(K, dtype=np.float32)[y]))

    def own(loss, y):
        value = loss(ids(y), pred) if callable(loss) else tf.keras.losses.get(loss)(ids(y), pred)
        return np.asarray(value)

    expected = lam * own(plain_loss, a) + (1 - lam) * own(plain_loss, b)
    got = soft_loss(tf.constant(mixed, tf.float32), pred).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(soft_loss(ids(a), pred).numpy(), own(plain_loss, a), atol=1e-5)  # Evaluation: plain labels.


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, [0.4, 1.6]])
def test_binary_mixed_targets_compose_too(weights, smoothing):
    rng = np.random.default_rng(1)
    pred = tf.constant(rng.uniform(0.05, 0.95, (6, 1)), tf.float32)
    a, b = np.array([0, 1, 1, 0, 1, 0]), np.array([1, 1, 0, 0, 0, 1])
    lam = rng.uniform(size=6).astype(np.float32)
    share = (lam * a + (1 - lam) * b)[:, None].astype(np.float32)
    soft_loss = models.make_loss(_config(label_mode="binary", label_smoothing=smoothing), 2, weights)
    plain_loss = models.make_loss(Config(label_mode="binary", label_smoothing=smoothing), 2, weights)

    def own(y):
        y = tf.constant(y[:, None], tf.float32)
        return np.asarray(plain_loss(y, pred) if callable(plain_loss) else tf.keras.losses.get(plain_loss)(y, pred))

    expected = lam * own(a) + (1 - lam) * own(b)
    assert np.allclose(soft_loss(tf.constant(share), pred).numpy(), expected, atol=1e-5)


def test_training_accuracy_reads_the_largest_share_of_a_soft_target():
    metric = models._accuracy(_config(label_mode="sparse"), K)
    pred = tf.constant(np.eye(K, dtype=np.float32)[[0, 1, 2, 3]])
    metric.update_state(tf.constant([[0.7, 0.3, 0, 0], [0.6, 0.4, 0, 0], [0, 0, 0.9, 0.1], [0, 0.5, 0, 0.5]]), pred)
    assert metric.result().numpy() == pytest.approx(0.5)  # Right: example 0 and 2 (3 ties to class 1).
    metric.reset_state()
    metric.update_state(tf.constant([0, 1, 0, 3]), pred)  # Evaluation labels: class ids.
    assert metric.result().numpy() == pytest.approx(0.75)
