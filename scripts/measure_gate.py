"""How often the promotion gate promotes: a challenger no better than the champion (false promotions) and one truly
a few points better (power), for each --promote_test and the point rule it replaced.

    python scripts/measure_gate.py [--models=16] [--draws=400] [--n=300] [--output=benchmarks/gate.json]

Real trained classifiers, not simulated coins: the digits (1,797 8x8 images, built in) split once into a training
half and a pool of 899 held-out examples, the population the draws sample. A small Keras MLP trained with three
recipes (60, 120 and 400 steps), --models seeds each; every model's accuracy on the whole pool is its true accuracy
here. Pairs of models (champion, challenger):

- null pairs, per metric: true values within 0.005 of each other (seeds of one recipe differ by several points when
  undertrained, so "another seed" alone is not "equally good"; and equal accuracy is not equal loss): any
  promotion is a false one;
- power pairs: the challenger truly better by 2 to 5 points (accuracy, macro F1) or 0.03 to 0.08 (loss).

Each draw picks a pair and --n examples of the pool (without replacement), and runs trainer.retrain.gate.decide on
the two models' predictions of them, as a retraining's gate does, at --promote_confidence=0.95 and
--promote_margin=0. Prints one markdown row per (draws, metric, test) and writes them to --output. The pool is
finite: --n of its 899 examples without replacement vary less than --n drawn from an unlimited population (the
variance of a difference shrinks by about 1 - n/899, 0.67 at n=300), so false promotions are understated and power
overstated against a retraining's fresh validation set. Not a test: tests/unit/test_gate.py holds the statistics on
simulated draws.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from trainer import config as _config  # noqa: E402,F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads.
from trainer.retrain import gate  # noqa: E402

RECIPES = {"short": 60, "medium": 120, "long": 400}  # Training steps (batch 32) of each recipe.
METRICS = ("accuracy", "macro_f1", "loss")
NULL_TOLERANCE = {"accuracy": 0.005, "macro_f1": 0.005, "loss": 0.005}  # "Equally good" on the whole pool.
POWER_RANGE = {"accuracy": (0.02, 0.05), "macro_f1": (0.02, 0.05), "loss": (0.03, 0.08)}  # "Truly a few points better".


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32) / 16.0, y[order]
    half = len(y) // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


def train(x, y, steps: int, seed: int) -> np.ndarray:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.layers.Input((64,)), tf.keras.layers.Dense(32, activation="relu"),
                                 tf.keras.layers.Dense(10, activation="softmax")])
    model.compile(tf.keras.optimizers.legacy.Adam(3e-3), "sparse_categorical_crossentropy")
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).repeat().batch(32)
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "gate.json"))
    args = parser.parse_args()
    started = time.time()
    (x, y), (pool_x, pool_y) = digits()
    models = []  # (recipe, seed, pool predictions, {metric: its value on the whole pool})
    for name, steps in RECIPES.items():
        found = [train(x, y, steps, seed).predict(pool_x, verbose=0) for seed in range(args.models)]
        for seed, p in enumerate(found):
            models.append((name, seed, p, {m: gate.score(p, pool_y, m) for m in METRICS}))
        accuracy = [m[3]["accuracy"] for m in models if m[0] == name]
        print(f"{name}: {steps} steps, pool accuracy {np.mean(accuracy):.4f} (min {min(accuracy):.4f}, max "
              f"{max(accuracy):.4f}) over {args.models} seeds, pool of {len(pool_y)}")
    rng = np.random.default_rng(1)
    classes = [str(i) for i in range(10)]
    rows, pair_counts = [], {}
    for metric in METRICS:
        def gain(i, j):  # The challenger j's true advantage over the champion i, in the metric's direction.
            a, b = models[j][3][metric], models[i][3][metric]
            return b - a if metric == "loss" else a - b

        tolerance, power = NULL_TOLERANCE[metric], POWER_RANGE[metric]
        pairs = {"null": [(i, j) for i in range(len(models)) for j in range(len(models))
                          if i != j and abs(gain(i, j)) <= tolerance],
                 "power": [(i, j) for i in range(len(models)) for j in range(len(models))
                           if power[0] <= gain(i, j) <= power[1]]}
        for kind, found in pairs.items():
            gains = [gain(i, j) for i, j in found]
            pair_counts[f"{metric}/{kind}"] = {"pairs": len(found), "true_gain_mean": float(np.mean(gains)),
                                               "true_gain_min": float(min(gains)), "true_gain_max": float(max(gains))}
            print(f"{metric} {kind} pairs: {len(found)} (true gain {np.mean(gains):+.4f}, {min(gains):+.4f} to "
                  f"{max(gains):+.4f})")
            draws = []
            for _ in range(args.draws):
                i, j = found[rng.integers(len(found))]  # (champion, challenger)
                subset = rng.choice(len(pool_y), args.n, replace=False)
                draws.append((models[j][2][subset], models[i][2][subset], pool_y[subset], int(rng.integers(1 << 30))))
            for test in (["mcnemar"] if metric == "accuracy" else []) + ["bootstrap", "none"]:
                promoted = [gate.decide(a, b, ids, classes, metric, test, 0.95, 0.0, None, seed)["promote"]
                            for a, b, ids, seed in draws]
                rate = float(np.mean(promoted))
                rows.append({"draws": kind, "metric": metric, "test": test, "promoted": rate, "n": args.n,
                             "count": len(draws), "confidence": 0.95})
                print(f"| {kind} | {metric} | {test} | {100 * rate:.2f}% ({sum(promoted)}/{len(draws)}) |")
                sys.stdout.flush()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"rows": rows, "models": args.models, "n": args.n, "recipes": RECIPES,
                   "pairs": pair_counts,
                   "seconds": round(time.time() - started)}, f, indent=1)
    print(f"written to {args.output} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
