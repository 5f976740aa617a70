"""The promotion gate's statistics (trainer.retrain.gate): the exact McNemar test, the paired bootstrap, the
per-class recall floor, and the false-promotion rate under equal models on simulated paired predictions (the
measurement on trained models is scripts/measure_gate.py, figures in the README)."""
import numpy as np
import pytest

from trainer.retrain import gate


def one_hot_predictions(predicted, k):
    p = np.full((len(predicted), k), 0.1 / (k - 1))
    p[np.arange(len(predicted)), predicted] = 0.9
    return p


def paired(b, c, both_right, both_wrong, k=3):
    """Predictions with exactly b examples only the challenger gets right, c only the champion."""
    ids = np.zeros(b + c + both_right + both_wrong, int)
    right, wrong = 0, 1
    challenger = [right] * b + [wrong] * c + [right] * both_right + [wrong] * both_wrong
    champion = [wrong] * b + [right] * c + [right] * both_right + [wrong] * both_wrong
    return one_hot_predictions(challenger, k), one_hot_predictions(champion, k), ids


def test_mcnemar_is_the_exact_one_sided_binomial_on_the_discordant_pairs():
    a, b, ids = paired(15, 5, 200, 30)
    verdict = gate.mcnemar(a, b, ids, confidence=0.95, margin=0.0)
    # P(X >= 15), X ~ Binomial(20, 1/2) = (C(20,15) + ... + C(20,20)) / 2^20 = 21700 / 1048576.
    assert verdict["p_value"] == pytest.approx(21700 / 1048576, rel=1e-9)
    assert verdict["promote"] and verdict["discordant"] == [15, 5] and verdict["n"] == 250
    assert "p=0.02069 on 20 discordant examples" in verdict["why"]
    line = gate.decide(a, b, ids, ["a", "b", "c"], "accuracy", None, 0.95, 0.0, None, seed=0)["why"]
    assert line.startswith("challenger accuracy 0.860000, champion 0.820000, n=250; McNemar exact test: p=0.02069")
    assert not gate.mcnemar(*paired(12, 8, 200, 30), confidence=0.95, margin=0.0)["promote"]  # p = 0.25
    assert not gate.mcnemar(*paired(15, 5, 200, 30), confidence=0.99, margin=0.0)["promote"]
    margin = gate.mcnemar(a, b, ids, confidence=0.95, margin=0.05)  # Gains 10/250 = 0.04.
    assert not margin["promote"] and "not by more than --promote_margin=0.05" in margin["why"]
    same = gate.mcnemar(b, b, ids, confidence=0.95, margin=0.0)
    assert same["p_value"] == 1.0 and not same["promote"]


def test_the_paired_bootstrap_promotes_a_clearly_better_loss_only():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, 300)
    sharp = np.full((300, 3), 0.05)
    sharp[np.arange(300), ids] = 0.9
    vague = np.full((300, 3), 0.25)
    vague[np.arange(300), ids] = 0.5
    better = gate.bootstrap(sharp, vague, ids, "loss", 0.95, 0.0, seed=1)
    assert better["promote"] and better["lower_bound"] > 0 and better["resamples"] >= 1000
    assert better["difference"] == pytest.approx(np.log(0.9) - np.log(0.5))
    assert not gate.bootstrap(vague, sharp, ids, "loss", 0.95, 0.0, seed=1)["promote"]
    again = gate.bootstrap(sharp, vague, ids, "loss", 0.95, 0.0, seed=1)
    assert again["lower_bound"] == better["lower_bound"]  # Seeded: the same decision on a rerun.
    assert not gate.bootstrap(sharp, vague, ids, "loss", 0.95, 1.0, seed=1)["promote"]  # Margin above the gain.


def test_the_class_floor_refuses_a_better_model_that_drops_one_class():
    ids = np.repeat([0, 1, 2], 100)
    champion = one_hot_predictions(np.where(np.arange(300) % 10 < 7, ids, (ids + 1) % 3), 3)  # 70% each class.
    predicted = ids.copy()
    predicted[200:250] = 0  # Perfect on classes 0 and 1, 50% on class 2.
    challenger = one_hot_predictions(predicted, 3)
    verdict = gate.decide(challenger, champion, ids, ["a", "b", "c"], "accuracy", None, 0.95, 0.0, 0.1, seed=0)
    assert verdict["test"] == "mcnemar" and not verdict["promote"]
    assert verdict["class_floor"]["failed"] == "c" and verdict["class_floor"]["drop"] == pytest.approx(0.2)
    assert "recall of class c falls by 0.2000" in verdict["why"]
    loose = gate.decide(challenger, champion, ids, ["a", "b", "c"], "accuracy", None, 0.95, 0.0, 0.25, seed=0)
    assert loose["promote"] and loose["class_floor"]["failed"] is None
    new = gate.decide(challenger, champion, ids, ["a", "b", "c"], "accuracy", None, 0.95, 0.0, 0.1, seed=0,
                      known=[True, True, False])  # The champion never knew class c: not floored.
    assert new["promote"] and new["class_floor"]["new_classes"] == ["c"] and "new classes c not floored" in new["why"]


def test_the_default_test_follows_the_metric_and_mcnemar_needs_accuracy():
    assert gate.default_test("accuracy") == "mcnemar" and gate.default_test("macro_f1") == "bootstrap"
    a, b, ids = paired(15, 5, 200, 30)
    assert gate.decide(a, b, ids, ["a", "b", "c"], "macro_f1", None, 0.95, 0.0, None, seed=0)["test"] == "bootstrap"
    with pytest.raises(ValueError, match="needs bootstrap"):
        gate.decide(a, b, ids, ["a", "b", "c"], "loss", "mcnemar", 0.95, 0.0, None, seed=0)
    old = gate.decide(a, b, ids, ["a", "b", "c"], "accuracy", "none", 0.95, 0.0, None, seed=0)
    assert old["promote"] and "no significance test" in old["why"]


def test_equal_models_are_rarely_promoted_and_a_better_one_usually_is():
    """Simulated paired correctness: two models with the same true accuracy (0.85, agreeing on most examples)
    are promoted at most about 5% of the time at 0.95 (the point rule promotes about half the time); a challenger
    truly 4 points better on n=400 is promoted most of the time."""
    rng = np.random.default_rng(7)

    def draw(gain, n=400):
        ids = np.zeros(n, int)
        base = rng.random(n) < 0.85
        flip_a, flip_b = rng.random(n) < 0.08, rng.random(n) < 0.08  # Each model errs apart on some examples.
        right_b = base ^ flip_b
        right_a = (base ^ flip_a) | (rng.random(n) < gain / 0.15 * ~(base ^ flip_a))
        return one_hot_predictions(np.where(right_a, 0, 1), 3), one_hot_predictions(np.where(right_b, 0, 1), 3), ids

    null = [draw(0.0) for _ in range(300)]
    gated = np.mean([gate.mcnemar(a, b, ids, 0.95, 0.0)["promote"] for a, b, ids in null])
    point = np.mean([gate.point_estimate(gate.score(a, ids, "accuracy"), gate.score(b, ids, "accuracy"), "accuracy",
                                         0.0, len(ids))["promote"] for a, b, ids in null])
    assert gated <= 0.07 and point >= 0.35, (gated, point)
    power = np.mean([gate.mcnemar(a, b, ids, 0.95, 0.0)["promote"] for a, b, ids in (draw(0.04) for _ in range(100))])
    assert power >= 0.6, power
