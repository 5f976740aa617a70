"""The metric registry (trainer.metric_registry): each metric's direction and computation, read by the
evaluation of both engines, the best export, early stopping and the promotion gate. A toy metric added through
`register` reaches all of them (docs/adding.md)."""
import numpy as np
import pytest

from trainer import metric_registry
from trainer.outputs import metrics
from trainer.retrain import champion_store
from trainer.run import early_stopping


@pytest.fixture
def error_rate():
    metric = metric_registry.register(metric_registry.Metric(
        "error_rate", higher_is_better=False,
        from_confusion=lambda m: 1.0 - np.trace(m) / max(np.sum(m), 1)))
    yield metric
    metric_registry.unregister("error_rate")


PROBABILITIES = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
TRUE = np.array([0, 1, 2, 2])


def test_the_built_in_metrics_and_their_directions():
    assert metric_registry.available(3, "categorical", 5) == ["accuracy", "loss", "macro_f1"]
    assert metric_registry.available(10, "categorical", 5) == ["accuracy", "loss", "macro_f1", "top_k_accuracy"]
    assert metric_registry.available(2, "binary", 5) == ["accuracy", "loss", "macro_f1", "auc"]
    assert metric_registry.lower_is_better("loss") and not metric_registry.lower_is_better("macro_f1")
    # Names not registered (a --model_fn model's own metrics): losses and errors are lower-better.
    assert metric_registry.lower_is_better("val_mae") is False and metric_registry.lower_is_better("mae")
    assert metric_registry.lower_is_better("head_loss") and not metric_registry.lower_is_better("head_accuracy")


def test_from_predictions_computes_what_the_registry_defines():
    found = metrics.from_predictions(PROBABILITIES, TRUE, ["a", "b", "c"], top_k=2)
    assert found["accuracy"] == 0.75
    # Class c: precision 1, recall 0.5 -> F1 2/3; a: precision 0.5, recall 1 -> 2/3; b: 1.
    assert found["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert found["top_k_accuracy"] == 0.75 and found["top_k"] == 2  # The last: c is third.
    binary = metrics.from_predictions(np.array([[0.2], [0.8], [0.6], [0.4]]), np.array([0, 1, 0, 1]), ["n", "p"],
                                      binary=True)
    assert binary["auc"] == 0.75 and binary["accuracy"] == 0.5  # Ranks: 3 of the 4 pairs ordered right.


def test_a_toy_metric_reaches_evaluation_comparison_and_early_stopping(tmp_path, error_rate):
    assert "error_rate" in metric_registry.available(3, "categorical", 5)
    found = metrics.from_predictions(PROBABILITIES, TRUE, ["a", "b", "c"])
    assert found["error_rate"] == pytest.approx(0.25)
    # Lower is better everywhere it is compared: the best export, the gate, early stopping.
    assert metric_registry.better({"error_rate": 0.3}, {"error_rate": 0.2}, "error_rate")
    assert champion_store.beats(0.2, 0.3, "error_rate", 0.05) and not champion_store.beats(0.28, 0.3, "error_rate", 0.05)
    for step, value in ((10, 0.3), (20, 0.2), (30, 0.25), (40, 0.22)):
        early_stopping.record(str(tmp_path), "error_rate", 2, 0.0, {"error_rate": value, "global_step": step})
    assert early_stopping.stopped_at(str(tmp_path)) == 40  # Two evaluations without beating 0.2.


def test_a_metric_that_cannot_be_computed_is_not_reported():
    binary = metrics.from_predictions(np.array([[0.2], [0.3]]), np.array([0, 0]), ["n", "p"], binary=True)
    assert binary["auc"] is None  # One class only: no ROC curve.
