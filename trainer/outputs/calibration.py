"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one temperature T > 0 divides
the output layer's logits, so that the served probabilities mean what they say; argmax, and so `classes` and
accuracy, are unchanged.

A softmax over logits z/T is the softmax of log(p)/T, so T is fitted on the served model's probabilities p alone
(no logits needed), by minimising the negative log-likelihood of the validation split over log T (scipy's bounded
scalar minimiser). The validation split was held out from training; the figures reported "after" scaling are
cross-fitted, so that no example is scored with a temperature fitted on it: the examples are split in two halves
(a seeded permutation), each half scaled with the temperature fitted on the other. The served temperature is the one
fitted on the whole split.

Figures (before and after): `ece` (expected calibration error over 15 equal-width confidence bins, Guo et al.'s),
`ece_equal_mass` (15 bins of equal counts), `nll` (mean negative log-likelihood), `brier` (mean squared distance
between the probability vector and the one-hot label, summed over classes). `reliability`: per bin, its confidence
range, count, mean confidence and accuracy (report.html draws it).
"""
from typing import List, Optional

import numpy as np

BINS = 15
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 54.6].


def as_classes(probabilities) -> np.ndarray:
    """[n, k] class probabilities; a binary model's [n, 1] (P(class 1)) becomes [n, 2]."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    return p


def scale(probabilities, temperature: float) -> np.ndarray:
    """The probabilities a temperature gives: softmax(log(p) / T) (for two classes, sigmoid(logit / T))."""
    logits = np.log(np.clip(as_classes(probabilities), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def brier(p: np.ndarray, y: np.ndarray) -> float:
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _bins(confidence: np.ndarray, equal_mass: bool, bins: int) -> List[np.ndarray]:
    if equal_mass:
        return [chunk for chunk in np.array_split(np.argsort(confidence, kind="stable"), bins) if len(chunk)]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi], the first [0, hi].
    return [np.flatnonzero(which == b) for b in range(bins)]


def ece(p: np.ndarray, y: np.ndarray, equal_mass: bool = False, bins: int = BINS) -> float:
    confidence, right = p.max(axis=1), (p.argmax(axis=1) == y)
    total = 0.0
    for members in _bins(confidence, equal_mass, bins):
        if len(members):
            total += len(members) * abs(confidence[members].mean() - right[members].mean())
    return float(total / max(len(y), 1))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = BINS) -> List[dict]:
    """The reliability diagram's bins (equal width): range, count, mean confidence, accuracy (None when empty)."""
    confidence, right = p.max(axis=1), (p.argmax(axis=1) == y)
    rows = []
    for b, members in enumerate(_bins(confidence, False, bins)):
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": int(len(members)),
                     "confidence": float(confidence[members].mean()) if len(members) else None,
                     "accuracy": float(right[members].mean()) if len(members) else None})
    return rows


def figures(p: np.ndarray, y: np.ndarray) -> dict:
    return {"ece": ece(p, y), "ece_equal_mass": ece(p, y, equal_mass=True), "nll": nll(p, y), "brier": brier(p, y)}


def fit_temperature(probabilities, y) -> float:
    """The temperature minimising the NLL of `probabilities` on labels `y`."""
    from scipy import optimize

    y = np.asarray(y, int)
    result = optimize.minimize_scalar(lambda log_t: nll(scale(probabilities, float(np.exp(log_t))), y),
                                      bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def calibrate(probabilities, y, seed: int = 0) -> Optional[dict]:
    """The temperature fitted on all examples, and the figures before and after (after: 2-fold cross-fitted).

    None when there are fewer than 20 examples (nothing to fit on). The record's `applied` is False, with `why`,
    where a temperature would not mean what it says: a half of the split with no misclassified example (on
    separable data the NLL keeps falling as T goes to 0, and the fit would make the model as sure as it can be), a
    temperature at the bounds of the search, or a cross-fitted NLL no lower than before (it does not carry over to
    examples it was not fitted on)."""
    p, y = as_classes(probabilities), np.asarray(y, int).reshape(-1)
    if len(y) < 20:
        return None
    order = np.random.default_rng(seed).permutation(len(y))
    halves = (order[: len(y) // 2], order[len(y) // 2:])
    wrong = [int(np.sum(p[h].argmax(axis=1) != y[h])) for h in halves]
    record = {"method": "temperature", "n": int(len(y)), "bins": BINS, "before": figures(p, y),
              "reliability_before": reliability(p, y)}
    if min(wrong) == 0:
        return dict(record, applied=False, why=f"{sum(wrong)} of the {len(y)} validation examples "
                    f"{'is' if sum(wrong) == 1 else 'are'} misclassified "
                    "(none in one half): nothing to tell an overconfident model from a right one")
    temperature = fit_temperature(p, y)
    after = np.zeros_like(p)
    folds = []
    for fit_on, apply_to in (halves, halves[::-1]):
        t = fit_temperature(p[fit_on], y[fit_on])
        after[apply_to] = scale(p[apply_to], t)
        folds.append(t)
    record.update(temperature=temperature, after=figures(after, y), reliability_after=reliability(after, y),
                  held_out="the validation split (not trained on); the 'after' figures are 2-fold cross-fitted "
                           f"(each half scaled with the temperature fitted on the other: {folds[1]:.4f}, "
                           f"{folds[0]:.4f})")
    edge = min(abs(np.log(t) - bound) for t in [temperature, *folds] for bound in LOG_T_BOUNDS)
    if edge < 0.05:
        return dict(record, applied=False, why=f"the fitted temperature ({temperature:.4g}, or a half's: "
                    f"{folds[0]:.4g}, {folds[1]:.4g}) is at the edge of the search ({np.exp(LOG_T_BOUNDS[0]):.3g} "
                    f"to {np.exp(LOG_T_BOUNDS[1]):.3g})")
    if record["after"]["nll"] >= record["before"]["nll"]:
        return dict(record, applied=False, why=f"the cross-fitted NLL ({record['after']['nll']:.4f}) is no lower than "
                    f"the model's own ({record['before']['nll']:.4f}): the temperature does not carry over")
    return dict(record, applied=True)
