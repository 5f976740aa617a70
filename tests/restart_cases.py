"""A seeded generator of recipes x interruptions, and the restart-equivalence property each must keep.

Each draw picks a recipe the package accepts (phases, steps or epochs, schedule, warmup, smoothing, class
weights, weight decay, clipping, early stopping, optimizer, backbone / --base_model / multi-output --model_fn,
freezing of both phases, --cache_features) and 1-3 interruptions: SIGKILL or SIGTERM, at a drawn
checkpoint step, a drawn number of seconds after the start, or at one of the instants between the writes of
a phase boundary (trainer.faultpoints). Each interruption is followed by the same command, until a run ends.

The property: the interrupted run ends as the uninterrupted one does:
- both exit 0 (or both refuse with the same `error:` line), no traceback, no "another recipe" line;
- the same `phases` in run_info.json (names, steps, recipe, trainable parameters);
- the `learning_rate` scalar at every step the interrupted run logged is the uninterrupted run's schedule
  at that step (and equal at the steps both logged);
- within each phase, the same set of weights changes (a phase trains what its flags say, after any restart);
- the same final step (without early stopping), and accuracies within noise.
Used by tests/test_restarts.py (a few draws) and scripts/restart_fuzz.py (many).
"""
import glob
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ACCURACY_NOISE = 0.2  # Tiny runs (tens of steps): a restart reorders the data, which moves accuracy this much.
BOUNDARY_POINTS = ("phase_before_rewrite", "phase_after_rewrite", "phase_after_record")


def _base_model(root: Path) -> str:
    """A small 'pretrained' model file (conv trunk + head) for --base_model draws."""
    path = root / "base.h5"
    if not path.exists():
        import tensorflow as tf

        tf.keras.utils.set_random_seed(0)
        inputs = tf.keras.Input((8, 8, 3), name="image")
        x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b_conv1")(inputs)
        x = tf.keras.layers.BatchNormalization(name="b_bn1")(x)
        x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b_conv2")(x)
        x = tf.keras.layers.GlobalAveragePooling2D(name="b_pool")(x)
        outputs = tf.keras.layers.Dense(4, activation="softmax", name="b_out")(x)
        tf.keras.Model(inputs, outputs).save(path)
    return str(path)


def _multi_npz(root: Path) -> str:
    """digits as two inputs (pixels, stats) and two outputs (digit, parity) for tests/multi_io_model.py."""
    path = root / "multi.npz"
    if not path.exists():
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.images[:600, :, :, None] / 16.0, digits.target[:600]
        arrays = {}
        for part, sl in (("train", slice(0, 480)), ("test", slice(480, 600))):
            arrays[f"x_{part}_pixels"] = x[sl].astype(np.float32)
            arrays[f"x_{part}_stats"] = np.stack([x[sl].mean((1, 2, 3)), x[sl].std((1, 2, 3))], -1).astype(np.float32)
            arrays[f"y_{part}_digit"], arrays[f"y_{part}_parity"] = y[sl], y[sl] % 2
        np.savez(path, **arrays)
    return str(path)


def draw(seed: int, root: Path, engine: Optional[str] = None) -> dict:
    """One recipe and its interruptions, reproducible from `seed` (and `engine`: --engine, None for the default;
    the Keras engine draws no --cache_features, which it refuses)."""
    rng = random.Random(seed)
    kind = rng.choice(("small_cnn",) * 5 + ("mlp", "base_model", "base_model", "model_fn", "cached"))
    if kind == "cached" and engine == "keras":
        kind = "small_cnn"
    args = ["--data=digits", "--classes=0,1,2,3,4,5"] if kind != "model_fn" else [f"--data={_multi_npz(root)}"]
    two_phases = kind not in ("cached",) and rng.random() < 0.7
    if kind in ("small_cnn", "cached"):
        args.append("--backbone=small_cnn")
    elif kind == "mlp":
        args.append("--backbone=mlp")
    elif kind == "base_model":
        args.append(f"--base_model={_base_model(root)}")
    else:
        args.append("--model_fn=multi_io_model:build")
    if kind == "cached":
        args += ["--cache_features", "--freeze=all"]
    elif kind in ("small_cnn", "base_model") and rng.random() < 0.6:
        args.append(f"--freeze={rng.choice(['all', 'none', '2', '-1', '1'])}")
    if two_phases and kind in ("small_cnn", "base_model") and rng.random() < 0.7:
        args.append(f"--fine_tune_freeze={rng.choice(['none', '1', '2', '-2', 'all'])}")
    batch = rng.choice([16, 32])
    examples = 480 if kind == "model_fn" else 845  # Training images of the 6 digit classes.
    if rng.random() < 0.25 and kind != "model_fn":
        epochs = rng.choice([0.3, 0.5, 0.8])
        args.append(f"--epochs={epochs}")
        total = math.ceil(epochs * examples / batch)
    else:
        total = rng.randrange(10, 50)
        args.append(f"--train_steps={total}")
    if two_phases:
        if rng.random() < 0.8:
            tune = rng.randrange(10, 40)
            args.append(f"--fine_tune_steps={tune}")
        else:
            epochs = rng.choice([0.2, 0.4])
            args.append(f"--fine_tune_epochs={epochs}")
            tune = math.ceil(epochs * examples / batch)
        total += tune
        if rng.random() < 0.4:
            args.append(f"--fine_tune_learning_rate={rng.choice([5e-4, 2e-3])}")
    optimizer = rng.choice(("adam", "adam", "sgd", "rmsprop"))
    rate = {"adam": 3e-3, "sgd": 0.05, "rmsprop": 2e-3}[optimizer]
    args += [f"--optimizer={optimizer}", f"--learning_rate={rate}"]
    schedule = rng.choice(("constant", "cosine", "cosine", "exponential", "step"))
    args.append(f"--lr_schedule={schedule}")
    if schedule == "cosine" and rng.random() < 0.5:
        args.append("--min_learning_rate=1e-5")
    if schedule in ("exponential", "step"):
        args += [f"--lr_decay_steps={rng.randrange(5, 20)}", "--lr_decay_rate=0.5"]
    if rng.random() < 0.4:
        args.append(f"--warmup_steps={rng.randrange(1, 12)}")
    if rng.random() < 0.3 and kind != "model_fn":
        args.append("--label_smoothing=0.1")
    if rng.random() < 0.3 and kind != "model_fn":
        args.append("--class_weight=balanced")
    if rng.random() < 0.3:
        args.append("--weight_decay=1e-4")
    if rng.random() < 0.3:
        args.append("--clip_norm=1.0")
    early = rng.random() < 0.2 and kind != "model_fn"
    if early:
        args += [f"--early_stopping_patience={rng.randrange(1, 3)}", "--early_stopping_min_delta=0.02"]
    every = rng.choice((5, 8, 10))
    args += [f"--save_checkpoints_steps={every}", "--eval_throttle_secs=0", "--keep_checkpoint_max=1000",
             f"--batch_size={batch}", f"--seed={rng.randrange(100)}"]
    interruptions = []
    for _ in range(rng.randrange(1, 4)):
        how = rng.choice(("kill", "term"))
        moment = rng.random()
        if two_phases and moment < 0.3:
            interruptions.append({"how": how, "point": rng.choice(BOUNDARY_POINTS)})
        elif moment < 0.45:
            interruptions.append({"how": how, "seconds": round(rng.uniform(2.0, 9.0), 1)})
        else:
            interruptions.append({"how": how, "step": rng.randrange(1, total)})
    if engine:
        args.append(f"--engine={engine}")
    if engine != "estimator":  # The Keras engine's steps per window (issue 37): auto (the flag left out), 1 or a
        # divisor of the checkpoint interval; drawn apart so that the draws above stay those of earlier seeds.
        window = random.Random(seed + 2_000_003).choice(["auto", "auto", 1] + [k for k in (2, 4, 5) if every % k == 0])
        if window != "auto" and (engine == "keras" or _default_engine() == "keras"):
            args.append(f"--steps_per_execution={window}")
    # --augment, drawn apart likewise (recipe round two: the policies and label-mixing ops replay their draws).
    augment = random.Random(seed + 3_000_017).choice(
        ["", "", "", "flip,zoom:0.1", "randaugment:2:9", "trivialaugment,mixup:0.4", "cutmix", "mixup:0.2,cutmix:1"])
    if augment and kind not in ("model_fn", "cached"):
        args.append(f"--augment={augment}")
    extra = random.Random(seed + 4_000_037)  # --ema_decay (with or without its ramp), --layer_lr_decay, --tta.
    if extra.random() < 0.3:
        args += [f"--ema_decay={extra.choice([0.5, 0.9])}"] + (["--noema_warmup"] if extra.random() < 0.3 else [])
    if extra.random() < 0.25 and two_phases and kind in ("small_cnn", "base_model"):
        args.append(f"--layer_lr_decay={extra.choice([0.5, 0.8])}")
    if extra.random() < 0.2 and kind != "model_fn":
        args.append(f"--tta={extra.choice(['flip', 'flip_crop'])}")
    # How the interrupted run names its --model_dir, drawn apart so that the draws above stay those of earlier seeds.
    form = random.Random(seed + 1_000_003).choice(PATH_FORMS)
    return {"seed": seed, "kind": kind, "args": args, "interruptions": interruptions, "early_stopping": early,
            "path_form": form}


PATH_FORMS = ("absolute", "relative", "dot")


def _default_engine() -> str:
    from trainer.config import resolve_engine

    return resolve_engine(None)


def _command(args: List[str], model_dir: Path, form: str = "absolute") -> List[str]:
    named = {"absolute": str(model_dir), "relative": model_dir.name, "dot": f"./{model_dir.name}"}[form]
    return [sys.executable, "-m", "trainer.task", *args, f"--model_dir={named}"]


def _cwd(model_dir: Path, form: str) -> Path:
    """A relative form is typed in the folder above the run (a user's working folder), not the repository."""
    if form == "absolute":
        return REPO
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    return model_dir.parent


def _env(extra: Optional[Dict[str, str]] = None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("AIP_MODEL_DIR", None)
    env.pop("TRAINER_FAULTPOINT", None)
    env.update(extra or {})
    return env


def _latest_step(model_dir: Path) -> int:
    try:
        text = (model_dir / "checkpoint").read_text()
    except OSError:
        return -1
    first = text.splitlines()[0] if text else ""
    try:
        return int(first.rsplit("-", 1)[1].rstrip('"'))
    except (IndexError, ValueError):
        return -1


def run_to_end(args: List[str], model_dir: Path, timeout: float = 300, form: str = "absolute"
               ) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args, model_dir, form), cwd=_cwd(model_dir, form), env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def interrupted_run(args: List[str], model_dir: Path, interruption: dict, index: int = 0, timeout: float = 300,
                    form: str = "absolute"):
    """Starts the command and interrupts it as drawn; returns (exit code, stderr, what happened)."""
    extra = {}
    if "point" in interruption:
        extra["TRAINER_FAULTPOINT"] = interruption["point"] + (":term" if interruption["how"] == "term" else "")
    log = model_dir.parent / f"{model_dir.name}-{index}.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(_command(args, model_dir, form), cwd=_cwd(model_dir, form), env=_env(extra),
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        started, sent = time.time(), None
        while proc.poll() is None and time.time() - started < timeout:
            reached = ("seconds" in interruption and time.time() - started >= interruption["seconds"]) or (
                "step" in interruption and _latest_step(model_dir) >= interruption["step"])
            if reached and sent is None:
                sent = signal.SIGKILL if interruption["how"] == "kill" else signal.SIGTERM
                proc.send_signal(sent)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    return code, log.read_text(), "signal sent" if sent else "not reached"


def _scalars(model_dir: Path, tag: str) -> Dict[int, float]:
    import tensorflow as tf

    out = {}
    for path in sorted(glob.glob(str(model_dir / "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == tag:
                        out[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                            else value.simple_value
        except tf.errors.DataLossError:  # A killed run's file ends mid-record: what was written before counts.
            continue
    return out


def _rate(phases: List[dict], global_step: int) -> Optional[float]:
    """The learning rate the recorded phases give a global step (what the training step `global_step` uses)."""
    from trainer.model.schedules import PhaseSchedule

    for p in phases:
        if p["first_step"] <= global_step < p["last_step"]:
            return PhaseSchedule(p["learning_rate"], p["first_step"], p["last_step"], p.get("lr_schedule", "constant"),
                                 p.get("warmup_steps", 0), p.get("min_learning_rate", 0.0), p.get("lr_decay_rate", 0.1),
                                 p.get("lr_decay_steps", 1000)).value(global_step)
    return None


def _checkpoint_at(model_dir: Path, step: int) -> Optional[str]:
    """The checkpoint written at `step` (the last one at or before it), preferring model.ckpt over phase.ckpt."""
    found = {}
    for index in glob.glob(str(model_dir / "*.ckpt-*.index")):
        s = int(index.rsplit("-", 1)[1].split(".")[0])
        if s <= step and (s not in found or os.path.basename(index).startswith("model.")):
            found[s] = index[:-len(".index")]
    return found[max(found)] if found else None


def changed_weights(model_dir: Path, phases: List[dict]) -> List[List[str]]:
    """For each phase: the model weights that differ between its first and its last checkpoint."""
    import tensorflow as tf

    out = []
    for p in phases:
        start, end = _checkpoint_at(model_dir, p["first_step"]), _checkpoint_at(model_dir, p["last_step"])
        if not start or not end or start == end:
            out.append([])
            continue
        a, b = tf.train.load_checkpoint(start), tf.train.load_checkpoint(end)
        names = [n for n in a.get_variable_to_shape_map()
                 if not n.startswith("training/") and n != "global_step" and "/replica_" not in n]
        out.append(sorted(n for n in names if n in b.get_variable_to_shape_map()
                          and not np.array_equal(a.get_tensor(n), b.get_tensor(n))))
    return out


def _evaluated_steps(model_dir: Path) -> List[int]:
    return sorted(_scalars(model_dir / "eval", "loss"))


def _error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _comparable(phases: List[dict]) -> List[dict]:
    return [{k: v for k, v in p.items()} for p in phases]


def run_case(seed: int, root: Path, engine: Optional[str] = None) -> List[str]:
    """Runs one draw; returns the violations of the property (empty: it holds)."""
    root.mkdir(parents=True, exist_ok=True)
    return check_case(draw(seed, root, engine), root)


def check_case(case: dict, root: Path) -> List[str]:
    """Runs a case (args, interruptions, early_stopping) uninterrupted and interrupted; returns the violations."""
    root.mkdir(parents=True, exist_ok=True)
    form = case.get("path_form", "absolute")
    where = (f"seed {case.get('seed')} ({case.get('kind')}: {' '.join(case['args'])}; {case['interruptions']}; "
             f"--model_dir {form})")
    plain_dir, cut_dir = root / "plain", root / "interrupted"
    plain = run_to_end(case["args"], plain_dir)
    problems = []
    for i, interruption in enumerate(case["interruptions"]):
        code, stderr, what = interrupted_run(case["args"], cut_dir, interruption, i, form=form)
        if "Traceback" in stderr:
            problems.append(f"{where}: interruption {i} ({what}): traceback: {stderr[-1500:]}")
        if code not in (0, 1, -9, 143, 130) and not (code == -15 and what == "signal sent"):
            problems.append(f"{where}: interruption {i} ({what}): exit {code}: {stderr[-1500:]}")
    final = run_to_end(case["args"], cut_dir, form=form)
    if plain.returncode != 0 or final.returncode != 0:
        if plain.returncode != final.returncode or _error_lines(plain.stderr) != _error_lines(final.stderr) or \
                plain.returncode != 1 or len(_error_lines(plain.stderr)) != 1:
            problems.append(f"{where}: uninterrupted exit {plain.returncode} {_error_lines(plain.stderr)}, "
                            f"interrupted exit {final.returncode}: {final.stderr[-2000:]}")
        return problems
    for text, name in ((final.stderr, "final rerun"), (plain.stderr, "uninterrupted run")):
        if "Traceback" in text:
            problems.append(f"{where}: {name} printed a traceback: {text[-2000:]}")
    all_stderr = final.stderr + "".join(p.read_text() for p in root.glob("*.stderr"))
    if "another recipe" in all_stderr:
        problems.append(f"{where}: a restart with the same command reported another recipe")
    info_a = json.loads((plain_dir / "run_info.json").read_text())
    info_b = json.loads((cut_dir / "run_info.json").read_text())
    if _comparable(info_a["phases"]) != _comparable(info_b["phases"]):
        problems.append(f"{where}: phases differ:\n  uninterrupted {info_a['phases']}\n  interrupted   "
                        f"{info_b['phases']}")
        return problems
    rates_a, rates_b = _scalars(plain_dir, "learning_rate"), _scalars(cut_dir, "learning_rate")
    for step, value in rates_b.items():
        expected = _rate(info_a["phases"], step - 1)  # Logged with the rate of the step it trained.
        if expected is not None and not np.isclose(value, expected, rtol=1e-4, atol=1e-9):
            problems.append(f"{where}: learning_rate at step {step} is {value}, the uninterrupted schedule gives "
                            f"{expected}")
        if step in rates_a and not np.isclose(value, rates_a[step], rtol=1e-4, atol=1e-9):
            problems.append(f"{where}: learning_rate at step {step}: {value} vs {rates_a[step]} uninterrupted")
    changed_a, changed_b = changed_weights(plain_dir, info_a["phases"]), changed_weights(cut_dir, info_b["phases"])
    if changed_a != changed_b:
        for p, a, b in zip(info_a["phases"], changed_a, changed_b):
            if a != b:
                problems.append(f"{where}: phase {p['name']} changed other weights: only uninterrupted "
                                f"{sorted(set(a) - set(b))}, only interrupted {sorted(set(b) - set(a))}")
    metrics_a = json.loads((plain_dir / "eval_metrics.json").read_text())
    metrics_b = json.loads((cut_dir / "eval_metrics.json").read_text())
    if not case["early_stopping"]:  # Evaluated at the same steps (a preemption checkpoint is not one of them).
        evaluated_a, evaluated_b = _evaluated_steps(plain_dir), _evaluated_steps(cut_dir)
        if evaluated_a != evaluated_b:
            problems.append(f"{where}: evaluated at steps {evaluated_b}, uninterrupted at {evaluated_a}")
    step_a, step_b = _latest_step(plain_dir), _latest_step(cut_dir)
    if not case["early_stopping"] and step_a != step_b:
        problems.append(f"{where}: final step {step_b} vs {step_a}")
    if metrics_a.get("served_model") != metrics_b.get("served_model"):
        problems.append(f"{where}: served model {metrics_b.get('served_model')} vs {metrics_a.get('served_model')}")
    for key in [k for k in metrics_a if k.endswith("accuracy") and isinstance(metrics_a[k], float)]:
        if abs(metrics_a[key] - metrics_b.get(key, -1)) > ACCURACY_NOISE:
            problems.append(f"{where}: {key} {metrics_b.get(key)} vs {metrics_a[key]} uninterrupted")
    return problems
