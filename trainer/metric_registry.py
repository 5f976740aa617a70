"""Every evaluation metric a run reports, once: its name, its direction, when it applies and how it is computed.

The evaluation of both engines, eval_metrics.json, the best export, early stopping, hyperparameter tuning, the
promotion gate and report.html read metrics from here (trainer/outputs/metrics.py computes them; the Estimator's
graph turns the same definitions into streaming ops, trainer/engines/estimator/metrics.py). Adding a metric is
one `register` call (docs/adding.md):

    register(Metric("balanced_error", higher_is_better=False,
                    from_confusion=lambda m: 1.0 - recall_per_class(m).mean()))

A metric is computed either `from_confusion` (the [true, predicted] count matrix of the whole split: exact under
streaming, because the matrix is a sum over batches) or `from_scores` (the probabilities [N, k] and the true class
ids [N]: the Keras engine's evaluation has them; the Estimator's graph needs a streaming op of the same name).
`loss` comes from the compiled loss, so it has neither.
"""
import dataclasses
from typing import Callable, Dict, List, Optional

# numpy is imported inside the computations: the flags are checked (trainer/config.py reads the names) where only
# the package itself is installed (tests/test_packaging.py).


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    # (num_classes, label_mode, top_k) -> whether a run of that kind reports it.
    applies: Callable[[int, str, int], bool] = lambda num_classes, label_mode, top_k: True
    from_confusion: Optional[Callable] = None  # (matrix [k, k]) -> float
    from_scores: Optional[Callable] = None  # (probabilities [N, k], true ids [N], top_k) -> float or None
    when: str = ""  # Which runs report it, as error lines say it (empty: every run).


_REGISTRY: Dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Adds (or replaces, by name) a metric; returns it."""
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Optional[Metric]:
    return _REGISTRY.get(name)


def names() -> List[str]:
    return list(_REGISTRY)


def choices() -> str:
    """The metric flags' choices as an error line offers them: `accuracy, ..., auc (--label_mode=binary only)`."""
    return ", ".join(f"{m.name} ({m.when})" if m.when else m.name for m in _REGISTRY.values())


def available(num_classes: int, label_mode: str, top_k: int) -> List[str]:
    """The scalar metrics a run with these classes reports, in registration order."""
    return [m.name for m in _REGISTRY.values() if m.applies(num_classes, label_mode, top_k)]


def lower_is_better(name: str) -> bool:
    """The registered direction; for a name not registered here (a --model_fn model's own Keras metric), lower
    for losses and errors (`loss`, `val_loss`, `mse`, `mae`, `*error*`), else higher."""
    metric = _REGISTRY.get(name)
    if metric is not None:
        return not metric.higher_is_better
    return "loss" in name or "error" in name or name in ("mse", "mae")


def improves(value: float, best: Optional[float], name: str, min_delta: float = 0.0) -> bool:
    """True when `value` beats `best` (None: nothing yet) on metric `name` by more than `min_delta`."""
    if best is None:
        return True
    return value < best - min_delta if lower_is_better(name) else value > best + min_delta


def better(best: Optional[dict], current: dict, name: str) -> bool:
    """True when the evaluation `current` beats `best` on `name`; on accuracy (else loss) when either lacks it."""
    if best is None:
        return True
    if name not in current or name not in best:
        name = "accuracy" if "accuracy" in current and "accuracy" in best else "loss"
    return improves(current[name], best[name], name)


# ---- the definitions ------------------------------------------------------------------------------------------
def recall_per_class(matrix):
    import numpy as np

    matrix = np.asarray(matrix, np.float64)
    support = matrix.sum(1)
    return np.divide(np.diag(matrix), support, out=np.zeros(len(matrix)), where=support > 0)


def _accuracy(matrix) -> float:
    import numpy as np

    matrix = np.asarray(matrix, np.float64)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def _macro_f1(matrix) -> float:
    """The mean F1 over the classes present in the split (a class with no example is left out)."""
    import numpy as np

    matrix = np.asarray(matrix, np.float64)
    tp, predicted, support = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)), where=precision + recall > 0)
    return float(f1[support > 0].mean()) if (support > 0).any() else 0.0


def _top_k_accuracy(probabilities, true_ids, top_k: int) -> float:
    import numpy as np

    top = np.argsort(-probabilities, axis=-1)[:, :top_k]
    return float((top == true_ids[:, None]).any(-1).mean()) if len(true_ids) else 0.0


def _auc(probabilities, true_ids, top_k: int) -> Optional[float]:
    """Area under the ROC curve of the positive class (the rank statistic, ties counting half); None without
    both classes in the split."""
    import numpy as np

    scores = probabilities[:, -1]
    pos, neg = scores[true_ids == 1], scores[true_ids == 0]
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata  # Average ranks over ties: the Mann-Whitney U statistic.

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


register(Metric("accuracy", True, from_confusion=_accuracy))
register(Metric("loss", False))
register(Metric("macro_f1", True, from_confusion=_macro_f1))
register(Metric("top_k_accuracy", True, applies=lambda k, mode, top_k: mode != "binary" and k > top_k,
                from_scores=_top_k_accuracy, when="more classes than --top_k"))
register(Metric("auc", True, applies=lambda k, mode, top_k: mode == "binary", from_scores=_auc,
                when="--label_mode=binary only"))
