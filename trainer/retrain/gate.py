"""The promotion gate's statistics: is the challenger better than the champion beyond chance, on the same examples?

Both models' predictions on the same evaluation examples (probabilities [n, k] over the same classes, and the true
class ids) are compared paired, example by example:

- `mcnemar` (accuracy): the exact McNemar test. Of the examples exactly one model gets right (the discordant pairs),
  the challenger gets b and the champion c; under "no better", b is Binomial(b + c, 1/2), so the one-sided p-value
  is P(X >= b) (scipy.stats.binomtest). Dietterich (1998): for models trained once, the test with an acceptable type
  I error.
- `bootstrap` (any registered metric): the paired bootstrap. The examples are resampled with replacement (the same
  indices for both models, seeded), the metric difference (challenger better is positive, whatever the metric's
  direction) computed on each resample (scipy.stats.bootstrap, percentile interval); the one-sided lower bound at
  the confidence level must clear the margin.
- `none`: the point estimate alone, as before this gate (the challenger better by more than the margin).

`class_floor` is the per-class recall floor (TFMA's slice thresholds): a challenger whose recall on any class both
models know falls by more than `max_drop` is refused, however much better it is on the whole.
"""
from typing import List, Optional, Sequence

import numpy as np

from trainer import metric_registry
BOOTSTRAP_RESAMPLES = 2000


def default_test(metric: str) -> str:
    """--promote_test left unset: McNemar for accuracy, the paired bootstrap for any other metric."""
    return "mcnemar" if metric == "accuracy" else "bootstrap"


def score(probabilities: np.ndarray, ids: np.ndarray, metric: str, top_k: int = 5) -> Optional[float]:
    """A registered metric from predictions: `loss` is the mean negative log-likelihood of the true class."""
    probabilities, ids = np.asarray(probabilities, np.float64), np.asarray(ids, int)
    if metric == "loss":
        return float(-np.log(np.maximum(probabilities[np.arange(len(ids)), ids], 1e-12)).mean())
    entry = metric_registry.get(metric)
    if entry is None:
        raise ValueError(f"no metric {metric}")
    if entry.from_confusion is not None:
        k = probabilities.shape[-1]
        matrix = np.bincount(ids * k + probabilities.argmax(-1), minlength=k * k).reshape(k, k)
        return float(entry.from_confusion(matrix))
    if entry.from_scores is not None:
        value = entry.from_scores(probabilities, ids, top_k)
        return None if value is None else float(value)
    return None


def _advantage(challenger: float, champion: float, metric: str) -> float:
    """How much better the challenger is: positive when better, in the metric's own units."""
    return (champion - challenger) if metric_registry.lower_is_better(metric) else (challenger - champion)


def mcnemar(challenger: np.ndarray, champion: np.ndarray, ids: np.ndarray, confidence: float, margin: float) -> dict:
    """The exact one-sided McNemar test on accuracy. Promotes when p < 1 - confidence and the accuracy gained
    exceeds the margin."""
    from scipy import stats

    ids = np.asarray(ids, int)
    right_a, right_b = challenger.argmax(-1) == ids, champion.argmax(-1) == ids
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    n = len(ids)
    p_value = float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    gain = (b - c) / max(n, 1)
    promote = p_value < 1.0 - confidence and gain > margin
    why = (f"McNemar exact test: p={p_value:.4g} on {b + c} discordant examples (challenger alone right {b}, "
           f"champion alone right {c}), accuracy {gain:+.4f}")
    if promote:
        why += f": better beyond chance at {confidence:g}" + (f" and by more than {margin:g}" if margin else "")
    elif p_value >= 1.0 - confidence:
        why += f": not better beyond chance at {confidence:g} (needs p < {1.0 - confidence:.3g})"
    else:
        why += f": better beyond chance, but not by more than --promote_margin={margin:g}"
    return {"test": "mcnemar", "promote": bool(promote), "p_value": p_value, "n": n, "discordant": [b, c],
            "difference": gain, "confidence": confidence, "margin": margin, "why": why}


def bootstrap(challenger: np.ndarray, champion: np.ndarray, ids: np.ndarray, metric: str, confidence: float,
              margin: float, seed: int, top_k: int = 5, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """The paired bootstrap of the metric's difference. Promotes when the one-sided lower bound at `confidence`
    of the challenger's advantage exceeds the margin."""
    from scipy import stats

    ids = np.asarray(ids, int)
    n = len(ids)

    def advantage(index, axis=-1):
        index = np.asarray(index, int)
        a, b = score(challenger[index], ids[index], metric, top_k), score(champion[index], ids[index], metric, top_k)
        return np.nan if a is None or b is None else _advantage(a, b, metric)

    point = advantage(np.arange(n))
    # batch: resamples drawn 100 at a time (2,000 x n indices at once would be gigabytes for 100k examples).
    result = stats.bootstrap((np.arange(n),), advantage, vectorized=False, paired=True, n_resamples=resamples,
                             batch=100, confidence_level=confidence, alternative="greater", method="percentile",
                             random_state=np.random.default_rng(seed))
    low = float(result.confidence_interval.low)
    promote = bool(np.isfinite(low) and low > margin)
    why = (f"paired bootstrap ({resamples} resamples, seed {seed}) of the {metric} advantage: "
           f"{point:+.4f}, lower bound {low:+.4f} at {confidence:g}")
    why += (f": clears --promote_margin={margin:g}" if promote else
            f": does not clear --promote_margin={margin:g}")
    return {"test": "bootstrap", "promote": promote, "n": n, "difference": float(point), "lower_bound": low,
            "resamples": resamples, "seed": seed, "confidence": confidence, "margin": margin, "why": why}


def point_estimate(challenger_value: float, champion_value: float, metric: str, margin: float, n: int) -> dict:
    """--promote_test=none: the rule before this gate."""
    gain = _advantage(challenger_value, champion_value, metric)
    promote = gain > margin
    why = (f"challenger {metric} {challenger_value:.6f} {'beats' if promote else 'does not beat'} champion "
           f"{champion_value:.6f} by more than {margin:g} (no significance test)")
    return {"test": "none", "promote": bool(promote), "n": n, "difference": float(gain), "margin": margin,
            "why": why}


def class_floor(challenger: np.ndarray, champion: np.ndarray, ids: np.ndarray, classes: Sequence[str],
                max_drop: float, known: Optional[Sequence[bool]] = None) -> dict:
    """Per-class recall of both models; `failed`: the class whose recall fell most, if by more than max_drop.
    Classes the champion does not know (`known` False) are not floored (it scores 0 on them)."""
    ids = np.asarray(ids, int)
    known = [True] * len(classes) if known is None else list(known)
    rows: List[dict] = []
    worst = None
    for j, name in enumerate(classes):
        mask = ids == j
        if not mask.any():
            continue
        a = float(np.mean(challenger[mask].argmax(-1) == j))
        b = float(np.mean(champion[mask].argmax(-1) == j))
        rows.append({"class": name, "n": int(mask.sum()), "challenger_recall": a, "champion_recall": b,
                     "floored": bool(known[j])})
        if known[j] and (worst is None or b - a > worst[1]):
            worst = (name, b - a)
    failed = worst if worst is not None and worst[1] > max_drop else None
    return {"max_class_drop": max_drop, "per_class": rows, "failed": failed[0] if failed else None,
            "drop": float(worst[1]) if worst else None,
            "new_classes": [name for name, k in zip(classes, known) if not k]}


def decide(challenger: np.ndarray, champion: np.ndarray, ids: np.ndarray, classes: Sequence[str], metric: str,
           test: Optional[str], confidence: float, margin: float, max_class_drop: Optional[float], seed: int,
           top_k: int = 5, known: Optional[Sequence[bool]] = None) -> dict:
    """The gate's decision on aligned predictions (the same examples, the same class columns): the test, then the
    per-class floor. The result's `why` is the promotion line's reason; the whole dict goes on record."""
    test = test or default_test(metric)
    if test == "mcnemar" and metric != "accuracy":
        raise ValueError(f"--promote_test=mcnemar compares accuracy; --promote_metric={metric} needs bootstrap")
    a_value, b_value = score(challenger, ids, metric, top_k), score(champion, ids, metric, top_k)
    if test == "mcnemar":
        verdict = mcnemar(challenger, champion, ids, confidence, margin)
    elif test == "bootstrap":
        verdict = bootstrap(challenger, champion, ids, metric, confidence, margin, seed, top_k)
    else:
        verdict = point_estimate(a_value, b_value, metric, margin, len(ids))
    verdict.update(metric=metric, challenger=a_value, champion=b_value)
    if test != "none":  # The point values first, then the test (the rule before the gate names them itself).
        verdict["why"] = (f"challenger {metric} {a_value:.6f}, champion {b_value:.6f}, n={len(ids)}; "
                          + verdict["why"])
    else:
        verdict["why"] += f", n={len(ids)}"
    if max_class_drop is not None:
        floor = class_floor(challenger, champion, ids, classes, max_class_drop, known)
        verdict["class_floor"] = floor
        if floor["failed"] is not None:
            verdict["promote"] = False
            verdict["why"] += (f"; refused: recall of class {floor['failed']} falls by {floor['drop']:.4f}, more "
                               f"than --promote_max_class_drop={max_class_drop:g}")
        if floor["new_classes"]:
            verdict["why"] += (f"; new classes {','.join(floor['new_classes'])} not floored (the champion does not "
                               "know them)")
    return verdict
