"""End-to-end benchmarks: the trainer against the plain Keras script, and --cache_features.

    python scripts/benchmark.py [--runs=3] [--images=4000] [--image_size=96]

Every figure is the wall time of a whole process (start to exit: imports, data,
graph building, training, evaluation, SavedModel export), median and spread over
--runs, all measured in this same invocation on the same synthetic JPEG folder:

  keras 300      scripts/keras_baseline.py: image_dataset_from_directory + fit + evaluate + save
  trainer 300    python -m trainer.task, same model (frozen MobileNetV2, random weights), steps, batch
  trainer 600    the same for 600 steps (~6 epochs of the training split)
  cached 600     the same with --cache_features

Then the input pipeline alone (scripts/benchmark_input.py). Prints markdown tables.
Not a test: CI never runs it.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))


def timed(cmd) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    from benchmark_input import make_folder

    tmp = tempfile.mkdtemp(prefix="bench-")
    folder = os.path.join(tmp, "jpegs")
    make_folder(folder, args.images, 128)
    py = sys.executable
    trainer = [py, "-m", "trainer.task", f"--data={folder}", "--backbone=mobilenet_v2", "--weights=none",
               "--freeze=all", f"--image_size={args.image_size}", f"--batch_size={args.batch_size}"]
    cases = {
        "keras 300": lambda out: [py, "scripts/keras_baseline.py", f"--data={folder}", f"--out={out}",
                                  "--steps=300", f"--batch_size={args.batch_size}",
                                  f"--image_size={args.image_size}"],
        "trainer 300": lambda out: trainer + ["--train_steps=300", f"--model_dir={out}"],
        "trainer 600": lambda out: trainer + ["--train_steps=600", f"--model_dir={out}"],
        "cached 600": lambda out: trainer + ["--train_steps=600", "--cache_features", f"--model_dir={out}"],
    }
    times = {name: [] for name in cases}
    for run in range(args.runs):  # Interleaved, so drifts in machine load hit every case alike.
        for name, make in cases.items():
            out = os.path.join(tmp, f"{name.replace(' ', '_')}_{run}")
            times[name].append(timed(make(out)))
            shutil.rmtree(out, ignore_errors=True)
            print(f"run {run} {name}: {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.images} JPEGs (128x128, 5 classes, 80% train) -> {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, frozen MobileNetV2; {os.cpu_count()} CPUs; {args.runs} runs each\n")
    print("| case | wall s (median) | min | max | ratio |")
    print("|---|---|---|---|---|")
    ratios = {"keras 300": "1.00 (reference)", "trainer 300": f"{median['trainer 300'] / median['keras 300']:.2f} "
              "vs keras 300", "trainer 600": "1.00 (reference)",
              "cached 600": f"{median['trainer 600'] / median['cached 600']:.2f}x faster than trainer 600"}
    for name, t in times.items():
        print(f"| {name} | {median[name]:.1f} | {min(t):.1f} | {max(t):.1f} | {ratios[name]} |")
    sys.stdout.flush()
    shutil.rmtree(tmp, ignore_errors=True)
    print()
    subprocess.run([py, "scripts/benchmark_input.py", f"--image_size={args.image_size}"], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
