"""Measures the Spot VM preemption budget: seconds from SIGTERM to exit 143 at each stage of a real run.

    python scripts/measure_sigterm.py [--engines=estimator,keras] [--stages=data,...,report] [--repeats=2]
        [--image_size=224] [--output=benchmarks/sigterm_budget.json]
    python scripts/measure_sigterm.py --table=benchmarks/sigterm_budget.json   (the Markdown table only)

Vertex AI gives a Spot VM about 30 s between SIGTERM and its stop. For each engine and stage this starts
`python -m trainer.task --backbone=mobilenet_v2 --weights=none --image_size=224` (each engine with its own
interpreter) on a folder of JPEGs (the 1,797 digits at 640x480, written once), watches the run (its
train.log, its --model_dir, its open files), sends SIGTERM from outside a little after the stage has begun,
and records: the seconds to exit, the exit status (143 expected), the newest checkpoint on disk afterwards,
whether the stage was still running when the signal was sent, and the last stderr lines.

Stages (and what says "it has begun"; what says "it has ended"):
  data        a JPEG of --data open in the process (the decode pass over every file); `data:` logged
  first_step  Keras: `phase train:` logged (Model.fit traces and runs step 1); Estimator: checkpoint 0 saved
              (the session runs step 1); checkpoint 8 saved
  evaluation  the first periodic evaluation (Keras: checkpoint 8 saved; Estimator: `Starting evaluation`)
  export      the first evaluation's SavedModel export (Keras: export/best/ created; Estimator: the eval's
              summary saved); `best so far:` logged
  training    steps 9..15 (`eval @ step 8` printed); checkpoint 16 saved
  promotion   --champion_dir (eval_metrics.json written just before); `promotion: promoted|not promoted`
  tflite      --export_tflite=float32 (`tflite: converting`); `tflite: wrote`
  report      report.html (`tflite: wrote`, no delay: the stage lasts 0.1-1 s); `done in`
Each run uses a fresh --model_dir and --champion_dir (no champion yet: promotion evaluates one model).
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_SECS = 30.0
TRAIN_STEPS, EVERY = 16, 8

# stage: (start, end, delay in s). A condition: ("log", regex on train.log), ("path", file under --model_dir),
# ("open", None: a file under --data open). A dict picks one per engine.
STAGES = {
    "data": (("open", None), ("log", r"\] data: .* classes"), 1.0),
    "first_step": ({"keras": ("log", r"phase train: steps"), "estimator": ("log", r"\] checkpoint saved at step 0 ")},
                   ("log", rf"\] checkpoint saved at step {EVERY} "), {"keras": 2.0, "estimator": 1.0}),
    "evaluation": ({"keras": ("log", rf"\] checkpoint saved at step {EVERY} "),
                    "estimator": ("log", r"Starting evaluation at")},
                   {"keras": ("path", "export/best"), "estimator": ("log", r"Finished evaluation")}, 1.0),
    "export": ({"keras": ("path", "export/best"),
                "estimator": ("log", rf"Saving 'checkpoint_path' summary for global step {EVERY}:")},
               ("log", r"best so far: "), {"keras": 0.5, "estimator": 1.0}),
    "training": (("log", rf"eval @ step {EVERY}:"), ("log", rf"\] checkpoint saved at step {TRAIN_STEPS} "), 1.0),
    "promotion": (("path", "eval_metrics.json"), ("log", r"promotion: (promoted|not promoted)"), 1.0),
    "tflite": (("log", r"tflite: converting"), ("log", r"tflite: wrote"), 1.0),
    "report": (("log", r"tflite: wrote"), ("log", r"\] done in \d"), 0.0),
}


def make_jpegs(folder: str, width: int = 640, height: int = 480) -> None:
    """The 1,797 digits as noisy colour JPEGs of a photo's size, one sub-folder per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits, rng = load_digits(), np.random.default_rng(0)
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        big = np.asarray(Image.fromarray((image * 15).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                         np.float32)
        rgb = np.stack([big * c for c in rng.uniform(0.6, 1.0, 3)], -1) + rng.normal(0, 12, (height, width, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, str(label), f"{i:05d}.jpg"), quality=90)


class Watch:
    """What the run shows so far: its train.log (read as it grows), its files, the files it has open."""

    def __init__(self, pid: int, model_dir: str, data: str):
        self.pid, self.model_dir, self.data, self.log, self._offset = pid, model_dir, os.path.realpath(data), "", 0

    def poll(self) -> None:
        try:
            with open(os.path.join(self.model_dir, "train.log"), "rb") as f:
                f.seek(self._offset)
                more = f.read()
            self._offset += len(more)
            self.log += more.decode(errors="replace")
        except FileNotFoundError:
            pass

    def holds(self, condition) -> bool:
        kind, what = condition
        if kind == "log":
            return re.search(what, self.log) is not None
        if kind == "path":
            return os.path.exists(os.path.join(self.model_dir, what))
        try:  # "open": a file under --data among the process's open files.
            fds = os.listdir(f"/proc/{self.pid}/fd")
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith(self.data + os.sep):
                    return True
            except OSError:
                continue
        return False


def latest_checkpoint(model_dir: str) -> dict:
    """The newest checkpoint the `checkpoint` file names, and whether its files are on disk."""
    try:
        with open(os.path.join(model_dir, "checkpoint")) as f:
            name = re.search(r'^model_checkpoint_path: "([^"]+)"', f.read(), re.M).group(1)
    except (OSError, AttributeError):
        return {"step": None, "on_disk": False}
    path = name if os.path.isabs(name) else os.path.join(model_dir, name)
    step = re.search(r"-(\d+)$", name)
    return {"step": int(step.group(1)) if step else None,
            "on_disk": os.path.exists(path + ".index") and any(
                p.startswith(os.path.basename(path) + ".data-") for p in os.listdir(os.path.dirname(path)))}


def pick(value, engine):
    return value[engine] if isinstance(value, dict) else value


def measure(engine: str, python: str, stage: str, data: str, work: str, args, index: int) -> dict:
    start, end, delay = (pick(v, engine) for v in STAGES[stage])
    model_dir = os.path.join(work, f"{engine}-{stage}-{index}")
    champions = model_dir + "-champions"
    command = [python, "-m", "trainer.task", f"--engine={engine}", f"--data={data}",
               f"--validation_split={args.validation_split}", "--backbone=mobilenet_v2", "--weights=none",
               f"--image_size={args.image_size}", f"--train_steps={TRAIN_STEPS}", f"--save_checkpoints_steps={EVERY}",
               "--eval_throttle_secs=0", "--batch_size=16", "--export_tflite=float32", f"--champion_dir={champions}",
               f"--model_dir={model_dir}"]
    with open(model_dir + ".stderr", "w+") as err, open(model_dir + ".stdout", "w") as out:
        launched = time.monotonic()
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err)
        watch, began, sent, running = Watch(proc.pid, model_dir, data), None, None, None
        while proc.poll() is None and time.monotonic() - launched < args.timeout:
            watch.poll()
            if began is None and watch.holds(start):
                began = time.monotonic()
            if began is not None and time.monotonic() - began >= delay:
                watch.poll()
                running = not watch.holds(end)  # The stage had not ended when the signal went.
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                break
            time.sleep(0.02)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        ended = time.monotonic()
        err.seek(0)
        stderr = err.read()
    watch.poll()
    lines = [line for line in stderr.splitlines() if line.strip()]
    result = {
        "engine": engine, "stage": stage, "repeat": index, "delay_after_start_s": delay,
        "signal_sent": sent is not None, "stage_running_at_signal": running,
        "seconds_to_signal": round(sent - launched, 2) if sent else None,
        "seconds_to_exit": round(ended - sent, 2) if sent else None,
        "exit_status": code, "within_budget": bool(sent and code == 143 and ended - sent <= BUDGET_SECS),
        "stage_ran_to_its_end": watch.holds(end) if sent else None,
        "checkpoint": latest_checkpoint(model_dir),
        "preempted_line": next((line for line in reversed(lines) if line.startswith("preempted")), None),
        "traceback": "Traceback" in stderr,
        "load_average_1min": round(os.getloadavg()[0], 2),  # Other work on the machine slows the exit.
        "stderr_tail": lines[-4:],
    }
    if not args.keep:
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(champions, ignore_errors=True)
    return result


def hardware(pythons: dict) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    memory = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    versions = {}
    for engine, python in pythons.items():
        versions[engine] = subprocess.run(
            [python, "-c", "import platform, tensorflow as tf; print(platform.python_version(), tf.__version__)"],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.strip()
    return {"cpu": model, "cpu_cores": len(os.sched_getaffinity(0)), "memory_gib": round(int(memory) / 2 ** 20, 1),
            "gpu": None, "python_and_tensorflow": versions, "platform": platform.platform()}


def table(results: list) -> str:
    """Markdown: stage x engine, median and worst seconds to exit, the exit statuses, the checkpoint steps."""
    engines = sorted({r["engine"] for r in results})
    rows = ["| stage | " + " | ".join(f"{e}: median / worst s (exit; checkpoint step)" for e in engines) + " |",
            "|---|" + "---|" * len(engines)]
    for stage in STAGES:
        cells = []
        for engine in engines:
            runs = [r for r in results if r["engine"] == engine and r["stage"] == stage and r["signal_sent"]]
            if not runs:
                cells.append("not measured")
                continue
            secs = [r["seconds_to_exit"] for r in runs]
            codes = ",".join(sorted({str(r["exit_status"]) for r in runs}))
            steps = ",".join(sorted({str(r["checkpoint"]["step"]) if r["checkpoint"]["on_disk"] else "none"
                                     for r in runs}))
            missed = sum(1 for r in runs if not r["stage_running_at_signal"])
            cells.append(f"{statistics.median(secs):.1f} / {max(secs):.1f} ({codes}; {steps})"
                         + (f" [{missed} of {len(runs)} signalled after the stage ended]" if missed else ""))
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="estimator,keras")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--validation_split", type=float, default=0.3, help="Of the 1,797 images: the evaluation "
                        "split (0.3: 566 images, an evaluation of several seconds).")
    parser.add_argument("--data", help="An image folder (one sub-folder per class). Default: the digits as JPEGs, "
                        "written to <workdir>/jpegs.")
    parser.add_argument("--estimator_python", default=os.path.join(REPO, ".venv", "bin", "python"))
    parser.add_argument("--keras_python", default=os.path.join(REPO, ".venv-keras", "bin", "python"))
    parser.add_argument("--workdir", help="Runs go here (default: a temporary folder).")
    parser.add_argument("--keep", action="store_true", help="Keep each run's --model_dir.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds before a run is killed.")
    parser.add_argument("--output", help="Write the results here as JSON (rewritten after each run).")
    parser.add_argument("--note", default="", help="Stored with the results (what code was measured, ...).")
    parser.add_argument("--table", metavar="JSON", help="Only print the Markdown table of an earlier --output.")
    args = parser.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            print(table(json.load(f)["runs"]))
        return 0
    engines, stages = args.engines.split(","), args.stages.split(",")
    unknown = [s for s in stages if s not in STAGES] + [e for e in engines if e not in ("estimator", "keras")]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    pythons = {e: getattr(args, f"{e}_python") for e in engines}
    work = args.workdir or tempfile.mkdtemp(prefix="sigterm-")
    os.makedirs(work, exist_ok=True)
    data = args.data or os.path.join(work, "jpegs")
    if not args.data and not os.path.isdir(data):
        make_jpegs(data)
    report = {"note": args.note, "hardware": hardware(pythons), "budget_s": BUDGET_SECS, "command": sys.argv,
              "run_flags": f"--data=<{'digits as 1797 JPEGs 640x480' if not args.data else args.data}> "
                           f"--validation_split={args.validation_split} --backbone=mobilenet_v2 --weights=none "
                           f"--image_size={args.image_size} --train_steps={TRAIN_STEPS} "
                           f"--save_checkpoints_steps={EVERY} --eval_throttle_secs=0 --batch_size=16 "
                           "--export_tflite=float32 --champion_dir=<fresh>",
              "stages": {s: {"start": STAGES[s][0], "end": STAGES[s][1], "delay_s": STAGES[s][2]} for s in stages},
              "runs": []}
    started = time.time()
    for index in range(args.repeats):
        for engine in engines:
            for stage in stages:
                result = measure(engine, pythons[engine], stage, data, work, args, index)
                report["runs"].append(result)
                print(f"{engine:9s} {stage:10s} #{index}: exit {result['exit_status']} "
                      f"{result['seconds_to_exit']} s after SIGTERM (mid-stage: {result['stage_running_at_signal']}, "
                      f"checkpoint {result['checkpoint']}) {result['preempted_line'] or result['stderr_tail'][-1:]}",
                      flush=True)
                report["wall_seconds"] = round(time.time() - started)
                if args.output:
                    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
                    with open(args.output, "w") as f:
                        json.dump(report, f, indent=1)
    print(table(report["runs"]))
    worst = [r for r in report["runs"] if not r["within_budget"]]
    print(f"{len(report['runs']) - len(worst)} of {len(report['runs'])} runs exited 143 within {BUDGET_SECS:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
