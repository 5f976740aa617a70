"""Temperature scaling (trainer.outputs.calibration): the temperature an overconfident model needs is found, its
calibration error falls with accuracy unchanged, and the figures are the textbook ones on hand-made cases."""
import numpy as np
import pytest

from trainer.outputs import calibration


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident(n=3000, k=5, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(sharpen * z): right ranking, too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    truth = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in truth])
    return softmax(sharpen * z), y


def test_the_fitted_temperature_undoes_the_overconfidence_and_keeps_every_class():
    p, y = overconfident()
    result = calibration.calibrate(p, y, seed=1)
    assert result["applied"] and result["temperature"] == pytest.approx(3.0, rel=0.1)
    before, after = result["before"], result["after"]
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["ece_equal_mass"] < before["ece_equal_mass"]
    scaled = calibration.scale(p, result["temperature"])
    assert np.array_equal(scaled.argmax(axis=1), p.argmax(axis=1)) and np.allclose(scaled.sum(axis=1), 1.0)
    assert sum(b["count"] for b in result["reliability_before"]) == len(y) == result["n"]
    assert len(result["reliability_after"]) == calibration.BINS == 15


def test_no_temperature_is_applied_where_it_would_not_mean_what_it_says():
    """Separable validation data (every example right): the NLL falls as T goes to 0 and the fit would make the
    model as sure as it can be (seen in a review: T=0.0235, logits x42). Not applied, and why."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.where(y[:, None] == np.arange(2), 0.8, 0.2)  # Right on every example, 80% sure.
    result = calibration.calibrate(p, y)
    assert not result["applied"] and "0 of the 200 validation examples are misclassified" in result["why"]
    assert "temperature" not in result and result["before"]["nll"] == pytest.approx(-np.log(0.8))
    # A well-calibrated model with noise: the cross-fitted NLL must improve, or nothing is applied.
    p2, y2 = overconfident(sharpen=1.0, seed=4, n=400)
    checked = calibration.calibrate(p2, y2)
    assert checked["applied"] == (checked["after"]["nll"] < checked["before"]["nll"])
    if not checked["applied"]:
        assert "cross-fitted NLL" in checked["why"]


def test_a_calibrated_model_keeps_a_temperature_near_one():
    p, y = overconfident(sharpen=1.0, seed=2)
    assert calibration.fit_temperature(p, y) == pytest.approx(1.0, abs=0.1)


def test_binary_scaling_is_the_sigmoid_of_the_scaled_logit():
    p1 = np.array([[0.9], [0.2], [0.5]])
    scaled = calibration.scale(p1, 2.0)
    logit = np.log(p1[:, 0] / (1 - p1[:, 0]))
    np.testing.assert_allclose(scaled[:, 1], 1 / (1 + np.exp(-logit / 2.0)), rtol=1e-9)
    np.testing.assert_allclose(calibration.scale(p1, 1.0)[:, 1], p1[:, 0], rtol=1e-9)


def test_the_figures_on_a_hand_made_case():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # Confidences 0.9, 0.9, 0.6, 0.7 in bins (13/15, 14/15], (8/15, 9/15], (10/15, 11/15]: |0.9 - 0.5| x 2/4 +
    # |0.6 - 1| x 1/4 + |0.7 - 1| x 1/4.
    assert calibration.ece(p, y) == pytest.approx(0.4 * 0.5 + 0.4 * 0.25 + 0.3 * 0.25)
    assert calibration.nll(p, y) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.7])))
    assert calibration.brier(p, y) == pytest.approx(np.mean([0.02, 1.62, 0.32, 0.18]))
    assert calibration.calibrate(p, y) is None  # Too few examples to fit on.
