"""How often the promotion gate promotes: a challenger no better than the champion (false promotions) and one truly
a few points better (power), for each --promote_test and the point rule it replaced.

    python scripts/measure_gate.py [--models=12] [--draws=400] [--n=300] [--output=benchmarks/gate.json]

Real trained classifiers, not simulated coins: the digits (1,797 8x8 images, built in) split once into a training
half and a pool of held-out examples. Two recipes, each trained --models times with different seeds (a small Keras
MLP: `weak` trained shortly, `strong` longer; their accuracies on the whole pool are printed):

- null draws: champion and challenger are two different seeds of the same recipe (`weak`), scored on --n examples
  drawn from the pool: any promotion is a false one (the two are equally good up to seed noise);
- power draws: the champion a `weak` model, the challenger a `strong` one, on --n pooled examples.

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

RECIPES = {"weak": 40, "strong": 400}  # Training steps (batch 32) of each recipe.


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
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "gate.json"))
    args = parser.parse_args()
    started = time.time()
    (x, y), (pool_x, pool_y) = digits()
    predictions = {}
    for name, steps in RECIPES.items():
        predictions[name] = [train(x, y, steps, seed).predict(pool_x, verbose=0) for seed in range(args.models)]
        accuracy = [float(np.mean(p.argmax(-1) == pool_y)) for p in predictions[name]]
        print(f"{name}: {steps} steps, pool accuracy {np.mean(accuracy):.4f} (min {min(accuracy):.4f}, max "
              f"{max(accuracy):.4f}) over {args.models} seeds, pool of {len(pool_y)}")
    rng = np.random.default_rng(1)
    cases = [("accuracy", "mcnemar"), ("accuracy", "bootstrap"), ("accuracy", "none"), ("macro_f1", "bootstrap"),
             ("macro_f1", "none"), ("loss", "bootstrap"), ("loss", "none")]
    rows = []
    classes = [str(i) for i in range(10)]
    for kind in ("null", "power"):
        draws = []
        for _ in range(args.draws):
            champion_seed, challenger_seed = rng.choice(args.models, 2, replace=False)
            subset = rng.choice(len(pool_y), args.n, replace=False)
            challenger = predictions["weak" if kind == "null" else "strong"][challenger_seed][subset]
            draws.append((challenger, predictions["weak"][champion_seed][subset], pool_y[subset],
                          int(rng.integers(1 << 30))))
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
                   "seconds": round(time.time() - started)}, f, indent=1)
    print(f"written to {args.output} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
