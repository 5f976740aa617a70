"""How often the promotion gate promotes: a challenger no better than the champion (false promotions) and one truly
a few points better (power), for each --promote_test and the point rule it replaced.

    python scripts/measure_gate.py [--models=16] [--draws=400] [--n=300] [--output=benchmarks/gate.json]

Real trained classifiers, not simulated coins: the digits (1,797 8x8 images, built in) split once into a training
half and a pool of 899 held-out examples, the population the draws sample. A small Keras MLP trained with three
recipes (60, 120 and 400 steps), --models seeds each; every model's accuracy on the whole pool is its true accuracy
here. Pairs of models (champion, challenger):

- null pairs: true accuracies within 0.5 point of each other (seeds of one recipe differ by several points when
  undertrained, so "another seed" alone is not "equally good"): any promotion is a false one;
- power pairs: the challenger truly better by 2 to 5 points.

Each draw picks a pair and --n examples of the pool (without replacement), and runs trainer.retrain.gate.decide on
the two models' predictions of them, as a retraining's gate does, at --promote_confidence=0.95 and
--promote_margin=0.

Each draw runs trainer.retrain.gate.decide on the two models' predictions, as a retraining's gate does, at
--promote_confidence=0.95 and --promote_margin=0. Prints one markdown row per (draws, metric, test) and writes them
to --output. Not a test: tests/unit/test_gate.py holds the statistics on simulated draws.
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
    models = []  # (recipe, seed, pool predictions, pool accuracy)
    for name, steps in RECIPES.items():
        found = [train(x, y, steps, seed).predict(pool_x, verbose=0) for seed in range(args.models)]
        accuracy = [float(np.mean(p.argmax(-1) == pool_y)) for p in found]
        models += [(name, seed, p, a) for seed, (p, a) in enumerate(zip(found, accuracy))]
        print(f"{name}: {steps} steps, pool accuracy {np.mean(accuracy):.4f} (min {min(accuracy):.4f}, max "
              f"{max(accuracy):.4f}) over {args.models} seeds, pool of {len(pool_y)}")
    pairs = {"null": [(i, j) for i in range(len(models)) for j in range(len(models))
                      if i != j and abs(models[i][3] - models[j][3]) <= 0.005],
             "power": [(i, j) for i in range(len(models)) for j in range(len(models))
                       if 0.02 <= models[j][3] - models[i][3] <= 0.05]}
    gains = {kind: [models[j][3] - models[i][3] for i, j in found] for kind, found in pairs.items()}
    for kind, found in pairs.items():
        print(f"{kind} pairs: {len(found)} (true accuracy gain: mean {np.mean(gains[kind]):+.4f}, "
              f"{min(gains[kind]):+.4f} to {max(gains[kind]):+.4f})")
    rng = np.random.default_rng(1)
    cases = [("accuracy", "mcnemar"), ("accuracy", "bootstrap"), ("accuracy", "none"), ("macro_f1", "bootstrap"),
             ("macro_f1", "none"), ("loss", "bootstrap"), ("loss", "none")]
    rows = []
    classes = [str(i) for i in range(10)]
    for kind in ("null", "power"):
        draws = []
        for _ in range(args.draws):
            i, j = pairs[kind][rng.integers(len(pairs[kind]))]  # (champion, challenger)
            subset = rng.choice(len(pool_y), args.n, replace=False)
            draws.append((models[j][2][subset], models[i][2][subset], pool_y[subset], int(rng.integers(1 << 30))))
        for metric, test in cases:
            promoted = [gate.decide(a, b, ids, classes, metric, test, 0.95, 0.0, None, seed)["promote"]
                        for a, b, ids, seed in draws]
            rate = float(np.mean(promoted))
            rows.append({"draws": kind, "metric": metric, "test": test, "promoted": rate, "n": args.n,
                         "count": len(draws), "confidence": 0.95})
            print(f"| {kind} | {metric} | {test} | {rate:.3f} ({sum(promoted)}/{len(draws)}) |")
            sys.stdout.flush()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"rows": rows, "models": args.models, "n": args.n, "recipes": RECIPES,
                   "pairs": {k: len(v) for k, v in pairs.items()},
                   "true_gain": {k: [float(np.mean(g)), float(min(g)), float(max(g))] for k, g in gains.items()},
                   "seconds": round(time.time() - started)}, f, indent=1)
    print(f"written to {args.output} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
