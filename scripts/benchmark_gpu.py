"""Training throughput on a GPU: `python -m trainer.task` (each engine this Python's TensorFlow has) against a plain
Keras `Model.fit` on the same model and the same data, across models, precisions, XLA and replica counts.

    python scripts/benchmark_gpu.py [--quick] [--factorial] [--cases=PATTERN,...] [--list]
                                    [--output=FILE.json] [--batch_size=N] [--image_size=N] [--budget_s=S]

Cases (one row each; `--list` prints them with the time each is expected to take, running nothing):

  runner     `trainer` (python -m trainer.task --engine=E) or `keras-fit` (a plain tf.keras script: this file run
             as a child process, same Python). Engines: `estimator` and `keras` on TensorFlow 2.15 with
             tensorflow-estimator, `keras` alone on TensorFlow 2.16+ (the trainer's own rule: config.resolve_engine).
  model      mobilenet_v2 (tf.keras.applications.MobileNetV2) and efficientnet_v2_b0 (EfficientNetV2B0), random
             weights (--weights=none: nothing is downloaded), a GlobalAveragePooling2D + Dense softmax head in
             float32, the legacy Adam at 1e-3, sparse_categorical_crossentropy: what trainer/model/models.py builds
             and compiles. The trunk trains (--freeze=none, the trainer's default with random weights; the trainer
             is given --freeze explicitly and keras-fit matches it; --freeze=all benchmarks a frozen trunk). The
             trainer's backbone registry (trainer/model/backbones.py) has no efficientnet_v2_b0: that model runs as
             keras-fit only, and its rows say so in `note`.
  precision  float32 or mixed_float16 (trainer --mixed_precision; keras-fit: the global mixed_float16 policy).
  xla        off or on (trainer --jit: the Keras engine compiles fit's step with XLA, the Estimator engine turns on
             auto-clustering, global_jit_level ON_1; keras-fit: compile(jit_compile=True)).
  replicas   1 or 2, the global batch split between them. Trainer: --strategy=one_device, or --strategy=mirrored
             --num_gpus=2 (2 physical GPUs; --num_cpu_replicas=2 on a CPU). keras-fit: no strategy, or a
             MirroredStrategy over 2 GPUs; with one physical GPU it splits it into 2 logical GPUs
             (tf.config.set_logical_device_configuration, each with a share of its memory), where TensorFlow
             reduces on one device instead of NCCL: that row measures the strategy's overhead, not scaling. The
             trainer cannot do the same: trainer/run/distribution.get_plan counts physical GPUs, refuses
             --num_gpus above that count, and has no flag that splits a GPU (only --num_cpu_replicas, for the CPU),
             so on a one-GPU machine its 2-replica rows are recorded as skipped with that reason, not run.

Modes:
  (default)   the GPU plan at 224 px, batch 128: MobileNetV2 in float32, mixed_float16 and mixed_float16 + XLA at
              1 replica and float32 at 2 replicas, each by every runner and engine; EfficientNetV2-B0 in float32 and
              mixed_float16 + XLA (keras-fit). Sized for under 8 minutes on one GPU: the plan's estimate is printed
              first (STARTUP_S and COMPILE_S below: guesses, no GPU was at hand to time them), and --budget_s (460)
              is a hard limit: a case starts only while at least MIN_CASE_S of it is left, and is stopped when it
              runs out (the rows left are recorded as skipped). Cases run in the order listed, most telling first.
  --factorial every combination of runner x model x precision x XLA x replicas (32 cases on TensorFlow 2.15, about
              16 minutes by the estimate, which is printed; no budget unless --budget_s is given).
  --quick     CPU-sized, for this 2-core machine and the tests: 96 px, batch 16, MobileNetV2, float32, XLA off,
              1 replica, every runner and engine; under 3 minutes (--budget_s 170). With --factorial: the quick
              sizes over every combination.
  --cases     comma-separated patterns matched against case ids (shown by --list) such as
              `trainer-keras/mobilenet_v2/mixed_float16/xla/r1` or `keras-fit/efficientnet_v2_b0/float32/noxla/r2`:
              shell-style wildcards (`*/xla/r1`), or a plain substring (`keras-fit`, `mixed`); a case runs when any
              pattern matches.

How the steady-state images/s are measured (warm-up excluded), for both runners alike:
  Each case runs in its own process for as long as it takes, not for a number of steps: --train_steps and
  fit's steps_per_epoch are set far beyond reach, and the process is stopped once its measurement is done. So
  the same sizes fit any GPU, fast or slow, and no evaluation, export or checkpoint happens inside the window.
  Step marks (wall time, global step) are collected from the first finished step on. The first mark (after
  step 1: tracing, XLA compilation, cuDNN autotuning) starts a warm-up of --warmup_s seconds; the first mark
  after it opens the window, and the first mark at least --measure_s later with at least --min_steps more steps
  closes it. images/s = (steps between the two marks) x global batch / (seconds between them).
  - trainer: its progress line (trainer/policy/progress.py: `step N/M (p%), x steps/s, y examples/s, ...`) is
    a bar redrawn every 0.5 s when stderr is a terminal, so the trainer runs with stderr on a pseudo-terminal and
    each bar update is a mark, timed here on arrival (it is written right after step N, or the call of several
    steps ending at N, has run: each engine reads the global step back before it writes). Without a terminal (no
    `pty` module) the marks are its progress lines on stderr, one per 10 s, timed on arrival; failing those, the
    same lines in <model_dir>/train.log, timed by their log timestamps (either way a case lasts about 30 s
    longer). The process is killed (SIGKILL to its own process group) once the window closes. The bar's own
    steps/s figure is not used: it covers a window of its own choosing.
  - keras-fit: model.fit with a callback that reads the clock after every step (with `_supports_tf_logs`, so
    fit does not copy its logs to the host each step, as plain fit with verbose=0 does not); at the marks that
    open and close the window it first waits for the step's results (the loss and the optimizer's step counter
    read back), so work still queued on the GPU is counted. It then stops fit and prints its result. Plain fit
    runs one step per call (steps_per_execution 1; --fit_steps_per_execution changes it).

Data: one synthetic .npz (x_train, y_train, x_test, y_test: random uint8 images at the model's size, 10 classes),
which the trainer reads with --data=<file>.npz and keras-fit reads with numpy into the same kind of tf.data
pipeline (from_tensor_slices, shuffle, repeat, batch, cast to float32, prefetch). Arrays at the model's size: no
resizing, and uint8 until batched, so the input pipeline stays well ahead of the GPU.

Output: --output=FILE.json, a JSON list with one row per case (written again after every case): runner, engine
(null for keras-fit), runtime (TensorFlow's version), precision, xla, replicas, images_per_sec (null when the case
did not run or failed, with `error` saying why), device (the GPU's name from
tf.config.experimental.get_device_details, or "CPU"), and case, model, image_size, batch_size, steps, seconds (the
window), startup_s (process start to the first mark: imports, data, graph, compilation), wall_s, method, freeze,
python, steps_per_execution (keras-fit's, --fit_steps_per_execution; null for the trainer, whose Keras engine
picks its own), note, error. Then a markdown table, with each trainer row's throughput as a fraction of
keras-fit's on the same model, precision, XLA and replicas. Exit status 1 when a case that ran failed.

Not a test (tests/test_benchmark_gpu.py runs --quick). Nothing here imports TensorFlow in the parent process: the
runtime is probed in a child, so --list and the unit tests stay fast.
"""
import argparse
import contextlib
import dataclasses
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)

MODELS = ("mobilenet_v2", "efficientnet_v2_b0")
# Keras application and preprocessing of each model, as trainer/model/backbones.py does it ("tf": pixels to [-1, 1]
# with a Rescaling layer; "none": the application rescales inside).
KERAS_APPS = {"mobilenet_v2": ("MobileNetV2", "tf"), "efficientnet_v2_b0": ("EfficientNetV2B0", "none")}
PRECISIONS = ("float32", "mixed_float16")
NUM_CLASSES = 10
TEST_IMAGES = 32
FAR_AWAY = 1_000_000  # --train_steps and --save_checkpoints_steps: never reached, the process is stopped first.
MIN_CASE_S = 20  # A case starts only with at least this much of --budget_s left.
STEP_MARK = re.compile(r"step (\d+)/(\d+) \(")
# absl's log prefix in train.log: I1205 06:13:46.725424 140046988839808 progress.py:43] step 52/60 (87%), ...
LOG_MARK = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?) +\d+ \S+\] step (\d+)/(\d+) \(", re.M)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclasses.dataclass(frozen=True)
class Sizes:
    image_size: int
    batch_size: int
    train_images: int
    warmup_s: float
    measure_s: float
    min_steps: int
    case_timeout_s: float
    budget_s: float  # 0: none.


QUICK = Sizes(image_size=96, batch_size=16, train_images=128, warmup_s=2.0, measure_s=5.0, min_steps=5,
              case_timeout_s=100.0, budget_s=170.0)
FULL = Sizes(image_size=224, batch_size=128, train_images=256, warmup_s=3.0, measure_s=4.0, min_steps=20,
             case_timeout_s=240.0, budget_s=460.0)

# The default GPU plan: (model, precision, xla, replicas), most telling first (the budget cuts from the end).
GPU_PLAN = (
    ("mobilenet_v2", "float32", False, 1),
    ("mobilenet_v2", "mixed_float16", False, 1),
    ("mobilenet_v2", "mixed_float16", True, 1),
    ("mobilenet_v2", "float32", False, 2),
    ("efficientnet_v2_b0", "float32", False, 1),
    ("efficientnet_v2_b0", "mixed_float16", True, 1),
)
QUICK_PLAN = (("mobilenet_v2", "float32", False, 1),)

# Seconds each part of a case is expected to take, for the printed estimate (not measured on a GPU here: the
# budget is what holds the total). startup: process start to the model built; compile: the first step.
STARTUP_S = {"gpu": {"keras-fit": 10.0, "trainer": 16.0}, "cpu": {"keras-fit": 8.0, "trainer": 12.0}}
COMPILE_S = {"gpu": {("mobilenet_v2", False): 6.0, ("mobilenet_v2", True): 25.0,
                     ("efficientnet_v2_b0", False): 9.0, ("efficientnet_v2_b0", True): 45.0},
             "cpu": {("mobilenet_v2", False): 4.0, ("mobilenet_v2", True): 25.0,
                     ("efficientnet_v2_b0", False): 6.0, ("efficientnet_v2_b0", True): 45.0}}
EXTRA_REPLICA_S = 3.0  # A strategy over 2 devices: more to build.
TEARDOWN_S = 1.0


@dataclasses.dataclass(frozen=True)
class Env:
    """What the runtime offers, probed in a child process (`probe`)."""

    tf_version: str
    python: str
    has_estimator: bool
    gpus: Tuple[str, ...] = ()  # Names of the physical GPUs.
    gpu_memory_mb: int = 0  # Of the first GPU (nvidia-smi), for the logical split; 0: unknown.
    trainer_backbones: Tuple[str, ...] = ()
    cpu_count: int = 1

    @property
    def engines(self) -> Tuple[str, ...]:
        return ("estimator", "keras") if self.has_estimator else ("keras",)

    @property
    def device(self) -> str:
        return self.gpus[0] if self.gpus else "CPU"

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"


@dataclasses.dataclass(frozen=True)
class Case:
    runner: str  # trainer, keras-fit
    engine: Optional[str]
    model: str
    precision: str
    xla: bool
    replicas: int
    note: str = ""
    skip: str = ""  # Why the case is not run (recorded as its error).

    @property
    def id(self) -> str:
        runner = f"trainer-{self.engine}" if self.runner == "trainer" else self.runner
        return f"{runner}/{self.model}/{self.precision}/{'xla' if self.xla else 'noxla'}/r{self.replicas}"


# ----------------------------------------------------------------------------------------------------------------
# The plan.

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized: 96 px, batch 16, MobileNetV2, float32, no "
                        "XLA, 1 replica, every runner and engine (under 3 minutes on 2 cores)")
    parser.add_argument("--factorial", action="store_true", help="every runner x model x precision x XLA x replicas "
                        "combination instead of the default plan")
    parser.add_argument("--cases", default="", help="comma-separated patterns over case ids (see --list): "
                        "wildcards, or a plain substring; a case runs when any matches")
    parser.add_argument("--list", action="store_true", help="print the cases and the estimate; run nothing")
    parser.add_argument("--output", help="write the rows here as a JSON list (rewritten after every case)")
    parser.add_argument("--image_size", type=int, help="square input size (default: 224; --quick 96)")
    parser.add_argument("--batch_size", type=int, help="global batch (default: 128; --quick 16)")
    parser.add_argument("--freeze", default="none", choices=("none", "all"), help="the trunk trains (none, the "
                        "trainer's default with random weights) or is frozen (all); both runners alike")
    parser.add_argument("--warmup_s", type=float, help="seconds after the first step before the window opens")
    parser.add_argument("--measure_s", type=float, help="the window's least length in seconds")
    parser.add_argument("--min_steps", type=int, help="the window's least number of steps")
    parser.add_argument("--case_timeout_s", type=float, help="a case still unmeasured after this is stopped and "
                        "recorded as failed (default 240; --quick 100)")
    parser.add_argument("--budget_s", type=float, help="the whole run's limit in seconds, 0 for none (default 460, "
                        "--quick 170, --factorial none)")
    parser.add_argument("--fit_steps_per_execution", type=int, default=1, help="keras-fit's compile("
                        "steps_per_execution=K): 1, plain fit's default (the trainer's Keras engine picks its own)")
    parser.add_argument("--logical_gpu_mb", type=int, default=0, help="memory of each logical GPU when keras-fit "
                        "splits one GPU into 2 (default: 85%% of the GPU's memory, shared)")
    parser.add_argument("--work_dir", help="keep the data, model_dirs and logs here (default: a temporary folder, "
                        "removed at the end unless a case failed)")
    parser.add_argument("--_probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_keras_fit_child", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "min_steps", "fit_steps_per_execution"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if args.batch_size is not None and args.batch_size % 2:
        parser.error("--batch_size must be even (2-replica cases split it)")
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    changes = {name: getattr(args, name) for name in ("image_size", "batch_size", "warmup_s", "measure_s",
                                                      "min_steps", "case_timeout_s", "budget_s")
               if getattr(args, name) is not None}
    if args.factorial and args.budget_s is None:
        changes["budget_s"] = 0.0
    return dataclasses.replace(base, **changes)


def plan_cases(args: argparse.Namespace, env: Env) -> List[Case]:
    """The cases of this mode on this runtime, in running order (before --cases)."""
    if args.factorial:
        configs = [(m, p, x, r) for m in MODELS for p in PRECISIONS for x in (False, True) for r in (1, 2)]
    else:
        configs = list(QUICK_PLAN if args.quick else GPU_PLAN)
    cases = []
    for model, precision, xla, replicas in configs:
        split = ""
        if replicas > 1 and env.gpus and len(env.gpus) < replicas:
            split = (f"1 physical GPU split into {replicas} logical GPUs; MirroredStrategy reduces on one device "
                     "(no NCCL on virtual GPUs): the strategy's overhead, not scaling")
        cases.append(Case("keras-fit", None, model, precision, xla, replicas, note=split))
        in_trainer = model in env.trainer_backbones
        for engine in env.engines:
            if not in_trainer:
                continue
            skip = ""
            if replicas > 1 and env.gpus and len(env.gpus) < replicas:
                skip = (f"skipped: the trainer cannot run {replicas} replicas on {len(env.gpus)} physical GPU: "
                        "trainer/run/distribution.get_plan refuses --num_gpus above the physical GPU count and has "
                        "no flag that splits a GPU into logical ones (only --num_cpu_replicas, for the CPU)")
            cases.append(Case("trainer", engine, model, precision, xla, replicas, skip=skip))
        if not in_trainer:
            cases[-1] = dataclasses.replace(cases[-1], note="; ".join(filter(None, (
                cases[-1].note, f"keras-fit only: the trainer's backbone registry (trainer/model/backbones.py) "
                                f"has no {model}"))))
    return cases


def select(cases: Sequence[Case], patterns: str) -> List[Case]:
    """The cases whose id matches any comma-separated pattern (wildcards, else a substring); all for ''."""
    terms = [p.strip() for p in patterns.split(",") if p.strip()]
    if not terms:
        return list(cases)
    globs = [t if any(c in t for c in "*?[") else f"*{t}*" for t in terms]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]


def estimate_s(case: Case, sizes: Sizes, env: Env) -> float:
    """Expected wall time of one case (STARTUP_S, COMPILE_S: guesses for a GPU, measured for this CPU)."""
    if case.skip:
        return 0.0
    kind = env.kind
    seconds = STARTUP_S[kind][case.runner] + COMPILE_S[kind][(case.model, case.xla)]
    seconds += sizes.warmup_s + sizes.measure_s + TEARDOWN_S
    if case.replicas > 1:
        seconds += EXTRA_REPLICA_S
    if case.runner == "trainer" and not pty_available():
        seconds += 30.0  # Marks from train.log: one per 10 s.
    return seconds


def pty_available() -> bool:
    return importlib.util.find_spec("pty") is not None and os.name == "posix"


# ----------------------------------------------------------------------------------------------------------------
# The measurement (pure: unit-tested).

def steady_window(marks: Sequence[Tuple[float, int]], warmup_s: float, measure_s: float,
                  min_steps: int) -> Optional[Tuple[Tuple[float, int], Tuple[float, int]]]:
    """(start, end) marks of the measurement window, or None while it is not complete.

    marks: (wall time, global step) in arrival order, the first one after step 1 at the earliest. The window
    opens at the first mark at least `warmup_s` after the first mark, and closes at the first mark at least
    `measure_s` and `min_steps` after that.
    """
    if not marks:
        return None
    first_time = marks[0][0]
    start = next((m for m in marks if m[0] >= first_time + warmup_s), None)
    if start is None:
        return None
    for mark in marks:
        if mark[0] >= start[0] + measure_s and mark[1] - start[1] >= min_steps:
            return start, mark
    return None


class BarMarks:
    """Step marks in the trainer's console output as it arrives (its bar, redrawn after a carriage return): each
    complete `step N/M (` counts once, timed by the arrival of the chunk that completed it."""

    def __init__(self):
        self.marks: List[Tuple[float, int]] = []
        self._pending = ""

    def feed(self, text: str, arrived: float) -> None:
        self._pending += text
        found = list(STEP_MARK.finditer(self._pending))
        self.marks.extend((arrived, int(m.group(1))) for m in found)
        self._pending = (self._pending[found[-1].end():] if found else self._pending)[-200:]


def marks_from_log(text: str, year: Optional[int] = None) -> List[Tuple[float, int]]:
    """Step marks of the progress lines in train.log, timed by absl's local-time prefix."""
    year = year or time.localtime().tm_year
    marks = []
    for m in LOG_MARK.finditer(text):
        month, day, hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), \
            float(m.group(5))
        stamp = time.mktime((year, month, day, hour, minute, int(second), 0, 0, -1)) + second % 1
        marks.append((stamp, int(m.group(6))))
    return marks


def rate_of(window, batch_size: int) -> Tuple[float, int, float]:
    (t0, s0), (t1, s1) = window
    return (s1 - s0) * batch_size / (t1 - t0), s1 - s0, t1 - t0


# ----------------------------------------------------------------------------------------------------------------
# Child processes: the probe and the keras-fit runner.

def _import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is not None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # As trainer/__init__.py: tf.keras is Keras 2 (tf-keras).
    import tensorflow as tf

    return tf


def probe() -> dict:
    """The runtime, as JSON for the parent: TensorFlow, engines, GPUs, the trainer's backbones."""
    sys.path.insert(0, REPO)
    try:
        import trainer  # noqa: F401 - first, as `python -m trainer.task` does.
    except Exception:  # noqa: BLE001 - reported through the backbone list below.
        pass
    tf = _import_tensorflow()
    version = tf.__version__
    major_minor = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    has_estimator = major_minor <= (2, 15) and importlib.util.find_spec("tensorflow_estimator") is not None
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001
            details = {}
        gpus.append(details.get("device_name") or gpu.name)
    memory = 0
    if gpus and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=30).stdout
            memory = int(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            memory = 0
    try:
        from trainer.model.backbones import BACKBONES

        backbones = sorted(BACKBONES)
    except Exception:  # noqa: BLE001 - the registry's source, read as text.
        path = os.path.join(REPO, "trainer", "model", "backbones.py")
        text = open(path).read() if os.path.exists(path) else ""
        backbones = sorted(set(re.findall(r'^\s*"(\w+)": Backbone\(', text, re.M)))
    return {"tf_version": version, "python": "%d.%d.%d" % sys.version_info[:3], "has_estimator": has_estimator,
            "gpus": gpus, "gpu_memory_mb": memory, "trainer_backbones": backbones,
            "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}


def build_keras_model(tf, model: str, size: int, num_classes: int, freeze: str):
    """The model trainer/model/models.py builds for --backbone=<model> --weights=none (same layers and dtypes)."""
    app, preprocess = KERAS_APPS[model]
    trunk = getattr(tf.keras.applications, app)(include_top=False, weights=None, input_shape=(size, size, 3))
    trunk.trainable = freeze != "all"
    inputs = tf.keras.Input((size, size, 3), name="image")
    x = tf.keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inputs) if preprocess == "tf" else inputs
    x = trunk(x, training=False) if freeze == "all" else trunk(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="transfer_model")


def keras_fit_child(spec: dict) -> dict:
    """A plain tf.keras run of one case: fit until the window is measured (`steady_window`), then stop."""
    tf = _import_tensorflow()
    import numpy as np

    replicas, note = spec["replicas"], ""
    strategy = None
    if replicas > 1:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus and len(gpus) >= replicas:
            devices = [f"/gpu:{i}" for i in range(replicas)]
        elif gpus:
            memory_mb = spec["logical_gpu_mb"]
            tf.config.set_logical_device_configuration(
                gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=memory_mb)] * replicas)
            devices = [d.name for d in tf.config.list_logical_devices("GPU")][:replicas]
            note = f"logical GPUs of {memory_mb} MB each"
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
            devices = [f"/cpu:{i}" for i in range(replicas)]
            note = f"the CPU split into {replicas} logical devices"
        strategy = tf.distribute.MirroredStrategy(devices)
    tf.keras.mixed_precision.set_global_policy(spec["precision"])
    with np.load(spec["data"]) as arrays:
        x, y = arrays["x_train"], arrays["y_train"]
    batch = spec["batch_size"]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=42, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch, drop_remainder=True).map(lambda a, b: (tf.cast(a, tf.float32), tf.cast(b, tf.int32)),
                                                  num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = build_keras_model(tf, spec["model"], spec["image_size"], NUM_CLASSES, spec["freeze"])
        model.compile(optimizer=tf.keras.optimizers.legacy.Adam(learning_rate=1e-3),
                      loss="sparse_categorical_crossentropy",
                      metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                      jit_compile=bool(spec["xla"]), steps_per_execution=spec["steps_per_execution"])

    class Marks(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._supports_tf_logs = True  # Logs stay tensors: no copy to the host each step.
            self.first, self.start, self.end = None, None, None

        def _synced(self, step, logs):
            float((logs or {}).get("loss", 0.0))  # Waits for this step's results.
            int(self.model.optimizer.iterations.numpy())
            return time.time(), step

        def on_train_batch_end(self, batch, logs=None):  # `batch`: the last step of the call (steps_per_execution).
            step, now = batch + 1, time.time()
            if self.first is None:
                self.first = self._synced(step, logs)
            elif self.start is None:
                if now >= self.first[0] + spec["warmup_s"]:
                    self.start = self._synced(step, logs)
            elif now >= self.start[0] + spec["measure_s"] and step - self.start[1] >= spec["min_steps"]:
                self.end = self._synced(step, logs)
                self.model.stop_training = True

    marks = Marks()
    model.fit(ds, epochs=1, steps_per_epoch=FAR_AWAY, verbose=0, callbacks=[marks])
    if marks.end is None:
        raise RuntimeError("fit ended before the window closed")
    rate, steps, seconds = rate_of((marks.start, marks.end), batch)
    return {"images_per_sec": rate, "steps": steps, "seconds": seconds,
            "startup_s": marks.first[0] - spec["launched"], "method": "fit callback (synced at both marks)",
            "child_note": note}


# ----------------------------------------------------------------------------------------------------------------
# Running the cases (parent side).

def make_data(path: str, sizes: Sizes) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    s = sizes.image_size
    np.savez(path, x_train=rng.integers(0, 256, (sizes.train_images, s, s, 3), dtype=np.uint8),
             y_train=rng.integers(0, NUM_CLASSES, sizes.train_images),
             x_test=rng.integers(0, 256, (TEST_IMAGES, s, s, 3), dtype=np.uint8),
             y_test=rng.integers(0, NUM_CLASSES, TEST_IMAGES))


def child_env() -> dict:
    env = dict(os.environ)
    for name in ("TF_CONFIG", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR",
                 "CLOUD_ML_HP_METRIC_TAG"):
        env.pop(name, None)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's own process group (it was started in a session of its own)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def last_error(text: str) -> str:
    """The most telling line of a failed child's output: its `error:` line, a Python exception, else the last."""
    lines = [ANSI.sub("", line).strip() for line in re.split(r"[\r\n]+", text)]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.lower().startswith("error:") or re.match(r"^[\w.]+(Error|Exception|Exit)\b", line):
            return line[:500]
    return (lines[-1] if lines else "no output")[:500]


def run_trainer(case: Case, sizes: Sizes, args, env: Env, data: str, folder: str, timeout: float) -> dict:
    model_dir = os.path.join(folder, "model_dir")
    if case.replicas == 1:
        strategy = ["--strategy=one_device"]
    elif env.gpus:
        strategy = ["--strategy=mirrored", f"--num_gpus={case.replicas}"]
    else:
        strategy = ["--strategy=mirrored", f"--num_cpu_replicas={case.replicas}"]
    cmd = [sys.executable, "-m", "trainer.task", f"--data={data}", f"--engine={case.engine}",
           f"--backbone={case.model}", "--weights=none", f"--freeze={args.freeze}", f"--image_size={sizes.image_size}",
           f"--batch_size={sizes.batch_size}", f"--train_steps={FAR_AWAY}", f"--save_checkpoints_steps={FAR_AWAY}",
           "--eval_steps=1", f"--model_dir={model_dir}", "--seed=42", *strategy]
    cmd += ["--mixed_precision"] if case.precision == "mixed_float16" else []
    cmd += ["--jit"] if case.xla else []
    console_path = os.path.join(folder, "console.txt")
    bar = BarMarks()
    console: List[str] = []
    launched = time.time()
    with open(os.path.join(folder, "stdout.txt"), "w") as stdout, open(console_path, "w") as console_file:
        console_file.write(" ".join(cmd) + "\n")
        console_file.flush()
        if pty_available():
            import pty

            master, slave = pty.openpty()
            proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=slave, start_new_session=True)
            os.close(slave)
            fd = master
        else:
            proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=subprocess.PIPE, start_new_session=True)
            fd = proc.stderr.fileno()

        def drain():
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child's side of the terminal is closed.
                    break
                if not chunk:
                    break
                arrived = time.time()
                text = chunk.decode("utf-8", "replace")
                console_file.write(text)
                console.append(text)
                bar.feed(text, arrived)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        log_path, log_offset, log_marks, log_text = os.path.join(model_dir, "train.log"), 0, [], ""
        window, method, error = None, "", ""
        while True:
            if proc.poll() is not None:
                reader.join(timeout=5)
            if os.path.exists(log_path):  # The fallback source: train.log's progress lines (10 s apart).
                with open(log_path, errors="replace") as f:
                    f.seek(log_offset)
                    log_text += f.read()
                    log_offset = f.tell()
                log_text = log_text.split("\n===== run started ")[-1]
                log_marks = marks_from_log(log_text)
            console_marks = ("progress bar marks on a pseudo-terminal" if proc.stderr is None else
                             "progress lines on stderr (10 s apart)") + ", timed on arrival"
            for marks, name in ((bar.marks, console_marks),
                                (log_marks, "progress lines of train.log, timed by their log timestamps")):
                window = steady_window(list(marks), sizes.warmup_s, sizes.measure_s, sizes.min_steps)
                if window:
                    method = name
                    break
            if window:
                break
            if proc.poll() is not None:
                error = f"exited ({proc.returncode}) before its measurement: {last_error(''.join(console))}"
                break
            if time.time() - launched > timeout:
                error = f"timeout: no steady-state window after {timeout:.0f} s ({len(bar.marks)} step marks)"
                break
            time.sleep(0.1)
        kill_group(proc)
        reader.join(timeout=5)
        if proc.stderr is None:  # The pseudo-terminal's side of ours.
            os.close(fd)
    result = {"method": method or None, "console_log": console_path}
    if window:
        rate, steps, seconds = rate_of(window, sizes.batch_size)
        first = (bar.marks or log_marks)[0][0]
        result.update(images_per_sec=rate, steps=steps, seconds=seconds, startup_s=first - launched)
    else:
        result["error"] = error
    return result


def run_keras_fit(case: Case, sizes: Sizes, args, env: Env, data: str, folder: str, timeout: float) -> dict:
    logical_mb = args.logical_gpu_mb or (int(env.gpu_memory_mb * 0.85 / case.replicas) if env.gpu_memory_mb
                                         else 8192)
    spec = {"model": case.model, "precision": case.precision, "xla": case.xla, "replicas": case.replicas,
            "image_size": sizes.image_size, "batch_size": sizes.batch_size, "data": data, "freeze": args.freeze,
            "warmup_s": sizes.warmup_s, "measure_s": sizes.measure_s, "min_steps": sizes.min_steps,
            "logical_gpu_mb": logical_mb, "steps_per_execution": args.fit_steps_per_execution,
            "launched": time.time()}
    log_path = os.path.join(folder, "console.txt")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, THIS, "--_keras_fit_child", json.dumps(spec)], cwd=REPO,
                                env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return {"error": f"timeout: no steady-state window after {timeout:.0f} s", "console_log": log_path}
        finally:
            kill_group(proc)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        with open(log_path, errors="replace") as f:
            return {"error": f"exited ({proc.returncode}): {last_error(f.read())}", "console_log": log_path}
    result = json.loads(lines[-1])
    result["console_log"] = log_path
    return result


def row_of(case: Case, sizes: Sizes, args, env: Env) -> dict:
    return {"case": case.id, "runner": case.runner, "engine": case.engine, "runtime": env.tf_version,
            "precision": case.precision, "xla": case.xla, "replicas": case.replicas, "images_per_sec": None,
            "device": env.device, "model": case.model, "image_size": sizes.image_size,
            "batch_size": sizes.batch_size, "steps": None, "seconds": None, "startup_s": None, "wall_s": None,
            "method": None, "freeze": args.freeze, "python": env.python,
            "steps_per_execution": args.fit_steps_per_execution if case.runner == "keras-fit" else None,
            "note": case.note or None,
            "error": case.skip or None}


def run_case(case: Case, sizes: Sizes, args, env: Env, data: str, work: str, timeout: float) -> dict:
    row = row_of(case, sizes, args, env)
    folder = os.path.join(work, case.id.replace("/", "_"))
    os.makedirs(folder, exist_ok=True)
    start = time.time()
    try:
        if case.runner == "trainer":
            result = run_trainer(case, sizes, args, env, data, folder, timeout)
        else:
            result = run_keras_fit(case, sizes, args, env, data, folder, timeout)
    except Exception as e:  # noqa: BLE001 - one case's failure is its row's, the run goes on.
        result = {"error": f"{type(e).__name__}: {e}"}
    child_note = result.pop("child_note", "")
    result.pop("console_log", None)
    row.update({k: v for k, v in result.items() if k in row})
    if child_note:
        row["note"] = "; ".join(filter(None, (row["note"], child_note)))
    row["wall_s"] = round(time.time() - start, 1)
    for key in ("images_per_sec", "seconds", "startup_s"):
        if isinstance(row[key], float):
            row[key] = round(row[key], 3 if key != "images_per_sec" else 1)
    return row


# ----------------------------------------------------------------------------------------------------------------
# Reporting.

def markdown(rows: Sequence[dict]) -> str:
    fit = {(r["model"], r["precision"], r["xla"], r["replicas"], r["batch_size"]): r["images_per_sec"]
           for r in rows if r["runner"] == "keras-fit"}
    lines = ["| runner | engine | model | precision | xla | replicas | batch | images/s | vs keras-fit | steps "
             "| window s | startup s | device | runtime | note / error |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        rate = r["images_per_sec"]
        base = fit.get((r["model"], r["precision"], r["xla"], r["replicas"], r["batch_size"]))
        ratio = f"{rate / base:.2f}" if r["runner"] == "trainer" and rate and base else ""
        text = "; ".join(filter(None, (r.get("note"), r.get("error")))).replace("|", "/")
        lines.append("| " + " | ".join(str(v) for v in (
            r["runner"], r["engine"] or "-", r["model"], r["precision"], "on" if r["xla"] else "off", r["replicas"],
            r["batch_size"], f"{rate:.1f}" if rate else "-", ratio, r["steps"] if r["steps"] is not None else "",
            r["seconds"] if r["seconds"] is not None else "", r["startup_s"] if r["startup_s"] is not None else "",
            r["device"], r["runtime"], text)) + " |")
    return "\n".join(lines)


def listing(cases: Sequence[Case], sizes: Sizes, env: Env) -> str:
    total = sum(estimate_s(c, sizes, env) for c in cases)
    lines = [f"{len(cases)} case(s) on TensorFlow {env.tf_version} (engines: {', '.join(env.engines)}), "
             f"{env.device}{f' x{len(env.gpus)}' if len(env.gpus) > 1 else ''}: {sizes.image_size} px, batch "
             f"{sizes.batch_size}, warm-up {sizes.warmup_s:g} s + window {sizes.measure_s:g} s (>= "
             f"{sizes.min_steps} steps) per case; estimated {total:.0f} s ({total / 60:.1f} min)"
             + (f", budget {sizes.budget_s:.0f} s" if sizes.budget_s else ", no budget")]
    for case in cases:
        extra = f"  [{case.skip.split(':')[0]}]" if case.skip else ""
        lines.append(f"  {case.id:55s} ~{estimate_s(case, sizes, env):4.0f} s{extra}"
                     + (f"  ({case.note})" if case.note else ""))
    return "\n".join(lines)


def probe_env() -> Env:
    proc = subprocess.run([sys.executable, THIS, "--_probe"], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"error: could not probe TensorFlow with {sys.executable}: {last_error(proc.stderr)}")
    found = json.loads(lines[-1])
    return Env(tf_version=found["tf_version"], python=found["python"], has_estimator=found["has_estimator"],
               gpus=tuple(found["gpus"]), gpu_memory_mb=int(found["gpu_memory_mb"]),
               trainer_backbones=tuple(found["trainer_backbones"]), cpu_count=int(found["cpu_count"]))


def write_rows(path: Optional[str], rows: Sequence[dict]) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(list(rows), f, indent=1)
        os.replace(path + ".tmp", path)


def main(argv: Optional[Sequence[str]] = None, env: Optional[Env] = None) -> int:
    began = time.time()
    args = parse_args(argv)
    if args._probe:
        print(json.dumps(probe()))
        return 0
    if args._keras_fit_child:
        result = keras_fit_child(json.loads(args._keras_fit_child))
        print(json.dumps(result), flush=True)
        sys.stderr.flush()
        os._exit(0)  # Skip TensorFlow's teardown: the measurement is out.
    env = env or probe_env()
    sizes = sizes_of(args)
    cases = select(plan_cases(args, env), args.cases)
    print(listing(cases, sizes, env), flush=True)
    if args.list or not cases:
        if not cases:
            print(f"no case matches --cases={args.cases}", file=sys.stderr)
        return 0 if cases else 2
    work = args.work_dir or tempfile.mkdtemp(prefix="benchmark-gpu-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, f"synthetic_{sizes.image_size}px.npz")
    make_data(data, sizes)
    rows, failed = [], False
    for i, case in enumerate(cases, start=1):
        elapsed = time.time() - began
        left = sizes.budget_s - elapsed if sizes.budget_s else float("inf")
        if case.skip:
            row = row_of(case, sizes, args, env)
        elif left < MIN_CASE_S:
            row = row_of(case, sizes, args, env)
            row["error"] = f"skipped: --budget_s={sizes.budget_s:.0f} spent ({elapsed:.0f} s elapsed)"
        else:
            print(f"[{i}/{len(cases)}] {case.id} (~{estimate_s(case, sizes, env):.0f} s) ...", flush=True)
            row = run_case(case, sizes, args, env, data, work, min(sizes.case_timeout_s, left))
            failed = failed or row["images_per_sec"] is None
        rows.append(row)
        write_rows(args.output, rows)
        shown = f"{row['images_per_sec']:.1f} images/s ({row['steps']} steps in {row['seconds']} s)" \
            if row["images_per_sec"] else f"no figure: {row['error']}"
        print(f"[{i}/{len(cases)}] {case.id}: {shown}" + (f"; case {row['wall_s']} s" if row["wall_s"] else "")
              + f"; elapsed {time.time() - began:.0f} s", flush=True)
    print()
    print(markdown(rows))
    print(f"\ntotal {time.time() - began:.0f} s" + (f"; rows in {args.output}" if args.output else ""))
    if failed or args.work_dir:
        print(f"data, model_dirs and console logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
