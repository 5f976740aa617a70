"""--ema_decay's average (trainer/model/ema.py): its value after k steps against the closed form (constant decay)
and against the ramp's recursion (--ema_warmup), the phase's first step copying the weights, the config the
Estimator's clone rebuilds it from, the checkpoint names of both engines, and the swap for an evaluation."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.model import ema

LR, W0 = 0.1, 1.0


def _steps(k, decay, warmup, first_step=0, optimizer=tf.keras.optimizers.legacy.SGD):
    """k SGD steps with gradient 1 on one weight (w_j = W0 - LR j): (the average, [w_1..w_k])."""
    cls = ema.with_average(optimizer, decay)
    opt = cls(learning_rate=LR, ema_decay=decay, ema_warmup=warmup, ema_first_step=first_step)
    var = tf.Variable([W0], name="w")
    opt.iterations.assign(first_step)
    for _ in range(k):
        opt.apply_gradients([(tf.constant([1.0]), var)])
    return float(opt.get_slot(var, ema.SLOT).numpy()[0]), [W0 - LR * j for j in range(1, k + 1)]


@pytest.mark.parametrize("k", [1, 2, 7, 40])
def test_constant_decay_matches_the_closed_form(k):
    decay = 0.9
    got, w = _steps(k, decay, warmup=False)
    # avg_1 = w_1; avg_k = D^(k-1) w_1 + (1 - D) sum_{j=2..k} D^(k-j) w_j.
    expected = decay ** (k - 1) * w[0] + (1 - decay) * sum(decay ** (k - j) * w[j - 1] for j in range(2, k + 1))
    assert got == pytest.approx(expected, rel=1e-5)


def test_the_warmup_ramp_follows_min_d_and_1_plus_t_over_10_plus_t():
    decay, k = 0.99, 30
    got, w = _steps(k, decay, warmup=True, first_step=100)  # A later phase: t counts from its first step.
    average = w[0]
    for t in range(1, k):
        rate = min(decay, (1 + t) / (10 + t))
        average = rate * average + (1 - rate) * w[t]
    assert got == pytest.approx(average, rel=1e-5)
    no_ramp, _ = _steps(k, decay, warmup=False, first_step=100)
    assert abs(no_ramp - W0) < abs(got - W0)  # Without the ramp the first weights weigh far more.


def test_adam_and_the_config_the_estimator_rebuilds_it_from():
    got, _ = _steps(3, 0.5, warmup=False, optimizer=tf.keras.optimizers.legacy.Adam)
    assert got < W0
    cls = ema.with_average(tf.keras.optimizers.legacy.Adam, 0.5)
    opt = cls(learning_rate=0.1, ema_decay=0.5, ema_warmup=False, ema_first_step=7)
    clone = type(opt).from_config(opt.get_config())
    assert clone._ema == (0.5, False, 7) and type(clone).__name__ == "Adam" and ema.keeps_average(clone)
    assert ema.with_average(tf.keras.optimizers.legacy.Adam, 0.0) is tf.keras.optimizers.legacy.Adam


def test_average_names_in_both_engines_checkpoints():
    weights = ["conv1/kernel", "dense/kernel", "bn/moving_mean"]
    keras = ["conv1/kernel", "training/conv1/kernel/ema", "training/conv1/kernel/m", "training/dense/kernel/ema"]
    estimator = ["training/Adam/conv1/kernel/ema", "training/Adam/conv1/kernel/ema/replica_1",
                 "training/Adam/dense/kernel/ema", "training/Adam/dense/kernel/m"]
    expected = {"conv1/kernel": "training/conv1/kernel/ema", "dense/kernel": "training/dense/kernel/ema"}
    assert ema.average_names(keras, weights) == expected
    assert ema.average_names(estimator, weights) == {k: v.replace("training/", "training/Adam/")
                                                     for k, v in expected.items()}
    assert ema.average_names(["conv1/kernel", "training/conv1/kernel/m"], weights) == {}
    mixed_precision = ["SGD/conv1/kernel/ema", "SGD/decay", "current_loss_scale"]  # The Estimator under it.
    assert ema.average_names(mixed_precision, weights) == {"conv1/kernel": "SGD/conv1/kernel/ema"}


def test_swapped_puts_the_averages_in_for_the_block_only():
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1, name="d")])
    cls = ema.with_average(tf.keras.optimizers.legacy.SGD, 0.5)
    model.compile(optimizer=cls(learning_rate=0.1, ema_decay=0.5, ema_warmup=False), loss="mse")
    model.fit(np.ones((8, 2)), np.zeros((8, 1)), batch_size=4, epochs=2, verbose=0)
    trained = [w.numpy().copy() for w in model.trainable_variables]
    averages = [model.optimizer.get_slot(w, ema.SLOT).numpy() for w in model.trainable_variables]
    assert not np.allclose(trained[0], averages[0])
    with ema.swapped(model):
        assert all(np.allclose(w.numpy(), a) for w, a in zip(model.trainable_variables, averages))
    assert all(np.array_equal(w.numpy(), t) for w, t in zip(model.trainable_variables, trained))


def test_names_match_exactly_in_one_form_per_checkpoint():
    # A Keras-form slot of a deeper weight is not an Estimator-form slot of a shallower one.
    names = ["training/a/b/c/kernel/ema", "training/b/c/kernel/ema"]
    assert ema.average_names(names, ["b/c/kernel", "a/b/c/kernel"]) == {
        "b/c/kernel": "training/b/c/kernel/ema", "a/b/c/kernel": "training/a/b/c/kernel/ema"}
    estimator = ["training/Adam/b/c/kernel/ema"]
    assert ema.average_names(estimator, ["b/c/kernel", "c/kernel"]) == {"b/c/kernel": "training/Adam/b/c/kernel/ema"}


class _Reader:
    def __init__(self, tensors):
        self._tensors = tensors

    def get_variable_to_shape_map(self):
        return {k: list(np.shape(v)) for k, v in self._tensors.items()}

    def get_tensor(self, name):
        return self._tensors[name]


def test_served_values_take_the_average_but_not_an_empty_slot():
    reader = _Reader({"d/kernel": np.ones(2), "training/d/kernel/ema": np.full(2, 0.5), "d/bias": np.ones(1),
                      "training/d/bias/ema": np.zeros(1), "z/bias": np.zeros(1), "training/z/bias/ema": np.zeros(1),
                      "bn/moving_mean": np.full(3, 2.0)})
    served = ema.served_values(reader, ["d/kernel", "d/bias", "z/bias", "bn/moving_mean", "missing"])
    assert np.array_equal(served["d/kernel"], [0.5, 0.5])  # The average.
    assert np.array_equal(served["d/bias"], [1.0])  # Zeros beside a non-zero weight: no update yet (ckpt-0).
    assert np.array_equal(served["z/bias"], [0.0]) and np.array_equal(served["bn/moving_mean"], [2.0, 2.0, 2.0])
    assert "missing" not in served
