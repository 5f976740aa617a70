"""End-to-end benchmarks: the trainer against the plain Keras script, and --cache_features.

    python scripts/benchmark.py [--runs=3] [--cases=keras300,trainer300,trainer600,cached600,floor]
                                [--images=4000] [--image_size=96] [--log_dir=DIR] [--skip_input]
                                [--tf221_python=.venv-keras/bin/python]

Every figure is the wall time of a whole process (start to exit: imports, data,
graph building, training, evaluation, SavedModel export), all measured in this
same invocation on the same synthetic JPEG folder, cases interleaved run by run
so drifts in machine load hit every case alike:

  keras300     scripts/keras_baseline.py: image_dataset_from_directory + fit + evaluate + save
  trainer300   python -m trainer.task, same model (frozen MobileNetV2, random weights), steps, batch
  trainer600   the same for 600 steps (~6 epochs of the training split)
  cached600    the same with --cache_features
  floor        scripts/benchmark_floor.py: TF import + one forward pass of the trunk over every image,
               what no cached run can avoid
  kengine300   trainer300 with --engine=keras (Model.fit; this Python's TensorFlow)
  keras300@221, kengine300@221   keras300 and kengine300 with --tf221_python (TensorFlow 2.21 + tf-keras)
  kengine600@221, kcached600@221, floor@221   trainer600, cached600 and floor on the Keras engine and TF 2.21

Every run is printed (with the longest silence in its log, which is where a stall
shows), then a markdown table per case: every run's time, median, min, max and
max/median. A run slower than 1.3x its case's median is flagged as an outlier,
not averaged away. Then the input pipeline alone (scripts/benchmark_input.py).
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
from typing import List, NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

CASES = ("keras300", "trainer300", "trainer600", "cached600", "floor", "kengine300", "keras300@221",
         "kengine300@221", "kengine600@221", "kcached600@221", "floor@221")
DEFAULT_CASES = CASES[:5]
OUTLIER = 1.3  # A run slower than this times its case's median is flagged.


class Run(NamedTuple):
    seconds: float
    cpu: float  # User + system CPU seconds of the process and its children: less sensitive to machine load.
    pause: float  # The longest time between two lines of the process's output.
    pause_after: str  # The line that preceded it.


def timed(cmd: List[str], log_path: str, env=None) -> Run:
    """Runs `cmd` to completion; every output line is timestamped on arrival into `log_path`."""
    start = time.perf_counter()
    last, pause, pause_after, previous = start, 0.0, "", "(start)"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", env=env)
        for line in process.stdout:
            now = time.perf_counter()
            if now - last > pause:
                pause, pause_after = now - last, previous
            last, previous = now, line.strip()
            log.write(f"{now - start:9.3f} {line}")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if seconds - (last - start) > pause:  # Silence between the last line and the exit.
        pause, pause_after = seconds - (last - start), previous
    if process.returncode:
        raise SystemExit(f"failed (exit {process.returncode}): {' '.join(cmd)}; log: {log_path}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, pause, pause_after)


def table(times: dict) -> List[str]:
    """Markdown rows: every run, median, spread; outliers (> OUTLIER x median) in bold."""
    median = {name: statistics.median(r.seconds for r in runs) for name, runs in times.items()}
    rows = ["| case | runs (s, in order) | median | min | max | max/median | CPU s (median) |",
            "|---|---|---|---|---|---|---|"]
    for name, runs in times.items():
        seconds = [r.seconds for r in runs]
        listed = ", ".join(f"**{s:.1f}**" if s > OUTLIER * median[name] else f"{s:.1f}" for s in seconds)
        rows.append(f"| {name} | {listed} | {median[name]:.1f} | {min(seconds):.1f} | {max(seconds):.1f} | "
                    f"{max(seconds) / median[name]:.2f} | {statistics.median(r.cpu for r in runs):.1f} |")
    return rows


def ratios(times: dict) -> List[str]:
    median = {name: statistics.median(r.seconds for r in runs) for name, runs in times.items()}
    lines = []
    if {"keras300", "trainer300"} <= set(median):
        lines.append(f"- trainer300 / keras300: {median['trainer300'] / median['keras300']:.2f} "
                     "(below 1 means the trainer is faster)")
    for engine, keras in (("kengine300", "keras300"), ("kengine300@221", "keras300@221")):
        if {engine, keras} <= set(median):
            lines.append(f"- {engine} / {keras}: {median[engine] / median[keras]:.2f}")
    if {"kengine300", "trainer300"} <= set(median):
        lines.append(f"- kengine300 / trainer300 (Keras engine / Estimator engine): "
                     f"{median['kengine300'] / median['trainer300']:.2f}")
    if {"trainer600", "cached600"} <= set(median):
        lines.append(f"- cached600 is {median['trainer600'] / median['cached600']:.2f}x faster than trainer600")
    if {"floor", "cached600"} <= set(median):
        lines.append(f"- cached600 / floor: {median['cached600'] / median['floor']:.2f}")
    if {"kengine600@221", "kcached600@221"} <= set(median):
        lines.append(f"- kcached600@221 / kengine600@221: {median['kcached600@221'] / median['kengine600@221']:.2f} "
                     "(the share of the uncached run's time a cached Keras-engine run takes)")
    if {"floor@221", "kcached600@221"} <= set(median):
        lines.append(f"- kcached600@221 / floor@221: {median['kcached600@221'] / median['floor@221']:.2f}")
    return lines


def outliers(times: dict) -> List[str]:
    lines = []
    for name, runs in times.items():
        median = statistics.median(r.seconds for r in runs)
        for i, r in enumerate(runs):
            if r.seconds > OUTLIER * median:
                lines.append(f"- OUTLIER {name} run {i}: {r.seconds:.1f} s = {r.seconds / median:.2f}x the median; "
                             f"longest silence {r.pause:.1f} s after: {r.pause_after[:150]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--tf221_python", help="the Python of a TensorFlow 2.21 + tf-keras venv, for the @221 cases")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--log_dir", help="keep every run's timestamped log here")
    parser.add_argument("--skip_input", action="store_true", help="skip the input pipeline benchmark")
    args = parser.parse_args()
    selected = [c for c in args.cases.split(",") if c]
    unknown = set(selected) - set(CASES)
    if unknown:
        parser.error(f"unknown --cases {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    if any(c.endswith("@221") for c in selected) and not args.tf221_python:
        parser.error("the @221 cases need --tf221_python (e.g. .venv-keras/bin/python, from make install-keras)")
    from benchmark_input import make_folder

    tmp = tempfile.mkdtemp(prefix="bench-")
    log_dir = args.log_dir or os.path.join(tmp, "logs")
    os.makedirs(log_dir, exist_ok=True)
    folder = os.path.join(tmp, "jpegs")
    make_folder(folder, args.images, 128)
    py = sys.executable
    size, batch = f"--image_size={args.image_size}", f"--batch_size={args.batch_size}"
    trainer = [py, "-m", "trainer.task", f"--data={folder}", "--backbone=mobilenet_v2", "--weights=none",
               "--freeze=all", size, batch]
    commands = {
        "keras300": lambda out: [py, "scripts/keras_baseline.py", f"--data={folder}", f"--out={out}",
                                 "--steps=300", batch, size],
        "trainer300": lambda out: trainer + ["--train_steps=300", f"--model_dir={out}"],
        "trainer600": lambda out: trainer + ["--train_steps=600", f"--model_dir={out}"],
        "cached600": lambda out: trainer + ["--train_steps=600", "--cache_features", f"--model_dir={out}"],
        "floor": lambda out: [py, "scripts/benchmark_floor.py", f"--data={folder}", size, batch],
    }
    py221 = os.path.abspath(args.tf221_python) if args.tf221_python else None
    commands["kengine300"] = lambda out: trainer + ["--train_steps=300", "--engine=keras", f"--model_dir={out}"]
    commands["keras300@221"] = lambda out: [py221] + commands["keras300"](out)[1:]
    commands["kengine300@221"] = lambda out: [py221] + commands["kengine300"](out)[1:]
    commands["kengine600@221"] = lambda out: [py221] + commands["trainer600"](out)[1:] + ["--engine=keras"]
    commands["kcached600@221"] = lambda out: [py221] + commands["cached600"](out)[1:] + ["--engine=keras"]
    commands["floor@221"] = lambda out: [py221] + commands["floor"](out)[1:]
    env221 = dict(os.environ, TF_USE_LEGACY_KERAS="1")  # keras_baseline.py imports TensorFlow itself.
    times = {name: [] for name in selected}
    started = time.time()
    for run in range(args.runs):
        for name in selected:
            out = os.path.join(tmp, f"{name}_{run}")
            r = timed(commands[name](out), os.path.join(log_dir, f"{name.replace('@', '_tf')}_{run}.log"),
                      env221 if name.endswith("@221") else None)
            times[name].append(r)
            shutil.rmtree(out, ignore_errors=True)
            print(f"run {run} {name}: {r.seconds:.1f} s, {r.cpu:.1f} CPU s (longest silence {r.pause:.1f} s after: "
                  f"{r.pause_after[:100]})", file=sys.stderr, flush=True)
    print(f"\n{args.images} JPEGs (128x128, 5 classes, 80% train) -> {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, frozen MobileNetV2 (random weights); {os.cpu_count()} CPUs; {args.runs} runs "
          f"each, interleaved; {time.time() - started:.0f} s in all\n")
    print("\n".join(table(times) + [""] + ratios(times) + outliers(times)))
    if args.log_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    sys.stdout.flush()
    if not args.skip_input:
        print()
        subprocess.run([py, "scripts/benchmark_input.py", size], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
