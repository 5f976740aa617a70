"""Does the fine-tuning recipe help, and does each feature of its second round? A transfer task made from real data.

    python scripts/benchmark_recipe.py [--seeds=3] [--variants=default,recipe,...] [--out=runs/recipe-bench]
        [--json=benchmarks/recipe.json]

The UCI digits that scikit-learn ships: a small_cnn trunk is trained on digits 0-4, then
transferred (`--base_model`, trunk frozen) to digits 5-9 with few training images (90% of
them held out for validation, about 18 per class), 300 steps in all:
- default: one phase, constant learning rate;
- recipe: head training, then fine-tuning of the whole trunk at a tenth of the rate (its
  BatchNorm in inference mode), cosine schedule with warmup, label smoothing 0.1;
- recipe+X: the recipe with one feature of the second round added (an average of the weights, RandAugment,
  TrivialAugment, Mixup, CutMix, layer-wise rates).
Every run also evaluates with test-time augmentation (--tta=flip_crop), so each variant's row has its TTA figures
from the same model. Each variant runs with the same seeds; the table gives the mean, the standard deviation and the
range of validation accuracy and NLL (the negative log probability of the true class), and the mean wall time of a
run. --json writes one row per run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 300
RECIPE = [f"--train_steps={STEPS // 2}", f"--fine_tune_steps={STEPS // 2}", "--lr_schedule=cosine",
          "--warmup_steps=20", "--label_smoothing=0.1"]
VARIANTS = {
    "default": [f"--train_steps={STEPS}"],
    "recipe": RECIPE,
    "recipe+ema": RECIPE + ["--ema_decay=0.99"],
    "recipe+randaugment": RECIPE + ["--augment=randaugment:2:5"],
    "recipe+trivialaugment": RECIPE + ["--augment=trivialaugment"],
    "recipe+mixup": RECIPE + ["--augment=mixup:0.2"],
    "recipe+cutmix": RECIPE + ["--augment=cutmix:1.0"],
    "recipe+layer_lr_decay": RECIPE + ["--layer_lr_decay=0.7"],
}


def train(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"run failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spread(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a comma-separated subset of: "
                        + ", ".join(VARIANTS))
    parser.add_argument("--steps_scale", type=float, default=1.0, help="the transfer runs' steps times this "
                        "(tests run 0.1; 4 gives 1,200 steps)")
    parser.add_argument("--out", default=os.path.join("runs", "recipe-bench"))
    parser.add_argument("--json", default=None, help="also write one row per run here")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or args.seeds < 1 or not 0 < args.steps_scale <= 10:
        sys.exit(f"error: unknown variants {unknown}; choose from {', '.join(VARIANTS)}" if unknown else
                 "error: --seeds must be at least 1 and --steps_scale in (0, 10]")
    out = os.path.abspath(args.out)
    base = os.path.join(out, "base")
    started = time.time()
    scale = (lambda flags: [_scaled(f, args.steps_scale) for f in flags])
    train("--data=digits", "--classes=0,1,2,3,4", "--backbone=small_cnn", f"--train_steps={int(300 * min(1.0, args.steps_scale))}",
          f"--model_dir={base}")
    rows = []
    for seed in range(1, args.seeds + 1):
        for name in names:
            began = time.time()
            summary = train("--data=digits", "--classes=5,6,7,8,9", "--validation_split=0.9",
                            f"--base_model={base}/keras_model.h5", "--batch_size=16", f"--seed={seed}",
                            "--save_checkpoints_steps=50", "--eval_throttle_secs=0", "--tta=flip_crop",
                            "--calibrate=none", *scale(VARIANTS[name]), f"--model_dir={out}/{name}-{seed}")
            with open(os.path.join(out, f"{name}-{seed}", "eval_metrics.json")) as f:
                tta = json.load(f)["tta"]
            rows.append({"variant": name, "seed": seed, "accuracy": tta["plain"]["accuracy"], "nll": tta["plain"]["nll"],
                         "tta_accuracy": tta["accuracy"], "tta_nll": tta["nll"], "seconds": time.time() - began,
                         "flags": scale(VARIANTS[name])})
            print(f"seed {seed} {name}: accuracy {summary['accuracy']:.4f}", file=sys.stderr, flush=True)
    print(f"| variant | added flags | accuracy, mean ± sd (range) | NLL | with --tta=flip_crop: accuracy | NLL | "
          f"s per run |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        added = [f for f in VARIANTS[name] if f not in RECIPE] if name.startswith("recipe+") else VARIANTS[name]
        added = scale(added)
        print(f"| {name} | `{' '.join(added)}` | {_spread([r['accuracy'] for r in mine])} | "
              f"{_spread([r['nll'] for r in mine])} | {_spread([r['tta_accuracy'] for r in mine])} | "
              f"{_spread([r['tta_nll'] for r in mine])} | {statistics.mean(r['seconds'] for r in mine):.1f} |")
    print(f"({time.time() - started:.0f} s in all, {args.seeds} seeds)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": int(STEPS * args.steps_scale), "seeds": args.seeds, "rows": rows}, f, indent=1)
    return 0


def _scaled(flag: str, scale: float) -> str:
    name, _, value = flag.partition("=")
    if scale != 1.0 and name in ("--train_steps", "--fine_tune_steps"):
        return f"{name}={max(1, int(int(value) * scale))}"
    return flag


if __name__ == "__main__":
    sys.exit(main())
