"""The fine-tuning recipe on real runs: schedules, epochs, two phases, resumes with another recipe,
early stopping, class weights, label smoothing, regularisation and the richer evaluation metrics."""
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, last_json, run_cli
from test_bad_inputs import assert_error, cli
from trainer.model.schedules import PhaseSchedule


def scalars(model_dir, tag):
    """{step: value} of a training scalar in the event files of model_dir (not eval/)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(str(model_dir), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                        else value.simple_value
    return out


def test_schedule_shapes():
    cosine = PhaseSchedule(0.1, first_step=100, last_step=300, kind="cosine", warmup_steps=20, min_learning_rate=0.01)
    assert cosine.value(100) == pytest.approx(0.1 / 20)  # First step of the phase: 1/20 of the rate.
    assert cosine.value(119) == pytest.approx(0.1)  # Warmup done.
    assert cosine.value(120 + 90) == pytest.approx(0.01 + 0.09 * 0.5)  # Half-way down the cosine.
    assert cosine.value(300) == pytest.approx(0.01)
    step = PhaseSchedule(1.0, kind="step", decay_rate=0.5, decay_steps=10)
    assert [step.value(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    smooth = PhaseSchedule(1.0, kind="exponential", decay_rate=0.5, decay_steps=10)
    assert smooth.value(5) == pytest.approx(0.5 ** 0.5)
    for s in (0, 37, 150, 299):  # The graph formula and the Python one agree.
        assert float(cosine(tf.constant(s + 100))) == pytest.approx(cosine.value(s + 100), rel=1e-5)


def test_learning_rate_scalar_follows_warmup_and_cosine(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("--data=digits", "--backbone=mlp", "--train_steps=250", "--lr_schedule=cosine", "--warmup_steps=150",
                   "--learning_rate=0.01", "--min_learning_rate=0.001", "--save_checkpoints_steps=1000",
                   f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = scalars(run, "learning_rate")
    schedule = PhaseSchedule(0.01, 0, 250, "cosine", 150, 0.001)
    assert len(logged) >= 3
    for step, value in logged.items():  # Written with the step's rate (the global step before the update).
        assert value == pytest.approx(schedule.value(step - 1), rel=1e-4), (step, value)
    assert logged[1] < logged[101] < 0.01  # Warming up...
    assert logged[201] < 0.01  # ...then decaying.
    assert re.search(r"step 250/250 .*lr 0\.00\d", proc.stderr)  # Shown in the progress line.


def test_epochs_set_the_steps(capsys, tmp_path):
    run = tmp_path / "run"
    status, errors = cli(capsys, "--data=digits", "--classes=0,1,2", "--backbone=mlp", "--epochs=1.5",
                         "--fine_tune_epochs=0.5", "--batch_size=16", "--lr_schedule=step", "--lr_decay_rate=0.5",
                         "--lr_decay_steps=20", f"--model_dir={run}")
    assert status == 0 and not errors
    info = json.loads((run / "run_info.json").read_text())
    examples = sum(info["counts"]["train"].values())
    assert info["steps_per_epoch"] == -(-examples // 16)
    first = math.ceil(1.5 * examples / 16)
    assert [(p["first_step"], p["last_step"]) for p in info["phases"]] == [(0, first), (first, first + -(-examples // 32))]
    assert info["train_steps"] == info["phases"][-1]["last_step"]
    served = json.loads((run / "eval_metrics.json").read_text())  # The last evaluation apart when not the served one.
    assert served.get("last_evaluation", served)["global_step"] == info["train_steps"]
    assert_error(capsys, "--epochs=2.0 and --train_steps=10 exclude each other", "--data=digits", "--epochs=2",
                 "--train_steps=10", f"--model_dir={tmp_path / 'x'}")


def _checkpoint(model_dir, step):
    return tf.train.load_checkpoint(os.path.join(str(model_dir), f"{'model' if step else 'phase'}.ckpt-{step}"))


def test_two_phases_unfreeze_the_top_of_the_trunk(tmp_path):
    run = tmp_path / "run"
    args = ["--data=digits", "--backbone=small_cnn", "--weights=none", "--freeze=all", "--train_steps=40",
            "--fine_tune_steps=30", "--fine_tune_freeze=-4", "--save_checkpoints_steps=40", "--eval_throttle_secs=0",
            f"--model_dir={run}"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout)["global_step"] == 70
    info = json.loads((run / "run_info.json").read_text())
    first, second = info["phases"]
    assert (first["name"], first["first_step"], first["last_step"]) == ("train", 0, 40)
    assert (second["name"], second["first_step"], second["last_step"]) == ("fine_tune", 40, 70)
    assert second["trainable_params"] > first["trainable_params"]
    assert second["learning_rate"] == pytest.approx(1e-4)  # --learning_rate / 10.
    start = tf.train.load_checkpoint(str(run / "phase.ckpt-40"))
    end = tf.train.load_checkpoint(str(run / "model.ckpt-70"))
    same = lambda name: np.array_equal(start.get_tensor(name), end.get_tensor(name))  # noqa: E731
    assert same("conv1/kernel") and same("bn1/gamma")  # Still frozen in phase 2.
    assert not same("conv2/kernel") and not same("bn2/gamma")  # Unfrozen: trained.
    assert same("bn2/moving_mean")  # BatchNorm in inference mode while fine-tuning.
    assert not same("probabilities/kernel")
    optimizer_state = [n for n in start.get_variable_to_shape_map() if "conv2/kernel/m" in n]
    assert optimizer_state and not start.get_tensor(optimizer_state[0]).any()  # Fresh at the boundary.


def test_sigkill_in_phase_two_resumes_there(tmp_path):
    run = tmp_path / "run"
    args = ["--data=digits", "--backbone=small_cnn", "--train_steps=30", "--fine_tune_steps=400",
            "--save_checkpoints_steps=30", "--eval_throttle_secs=1000", f"--model_dir={run}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "trainer.task", *args, "--verbose"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if re.search(r"after saving checkpoint (6\d|9\d|1\d\d)\b", line):
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = int(tf.train.latest_checkpoint(str(run)).rsplit("-", 1)[1])
    assert killed_at > 30
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_json(again.stdout)["global_step"] == 430
    log = (run / "train.log").read_text().split("===== run started")[-1]
    assert f"Restoring parameters from {run}/model.ckpt-{killed_at}" in log
    assert [p["name"] for p in json.loads((run / "run_info.json").read_text())["phases"]] == ["train", "fine_tune"]


def test_resume_with_another_learning_rate_trains_at_it(capsys, tmp_path):
    run = tmp_path / "run"
    common = ["--data=digits", "--backbone=mlp", "--save_checkpoints_steps=100", f"--model_dir={run}"]
    assert cli(capsys, *common, "--train_steps=100") == (0, [])
    status, errors, err = cli(capsys, *common, "--train_steps=150", "--learning_rate=0.02", whole_stderr=True)
    assert status == 0 and not errors, err[-3000:]
    assert "a new training phase starts" in err
    rates = scalars(run, "learning_rate")
    assert rates[1] == pytest.approx(1e-3) and rates[101] == pytest.approx(0.02)
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["first_step"], p["last_step"], p["learning_rate"]) for p in phases] == [(0, 100, 1e-3), (100, 150, 0.02)]
    # Another optimizer and another freezing also resume (a fresh optimizer state), never a RestoreV2 crash.
    assert cli(capsys, *common, "--train_steps=170", "--learning_rate=0.02", "--optimizer=sgd", "--freeze=all") == (0, [])
    assert len(json.loads((run / "run_info.json").read_text())["phases"]) == 3


def test_early_stopping_stops_a_plateau_and_keeps_the_best(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["--data=digits", "--backbone=mlp", "--train_steps=2000", "--learning_rate=1e-7",
            "--save_checkpoints_steps=10", "--eval_throttle_secs=0", "--early_stopping_patience=2",
            "--early_stopping_min_delta=0.05", f"--model_dir={run}"]
    assert cli(capsys, *args) == (0, [])
    summary = json.loads((run / "eval_metrics.json").read_text())  # What the summary line reports.
    info = json.loads((run / "run_info.json").read_text())
    assert info["early_stopped_at_step"] is not None and summary["global_step"] < 100
    state = json.loads((run / "early_stopping.json").read_text())
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    assert best["metrics"]["global_step"] == state["best_step"]
    assert summary["accuracy"] == pytest.approx(best["metrics"]["accuracy"])  # The best model is reported...
    assert cli(capsys, *args) == (0, [])  # ...and a restart does not train on.
    assert json.loads((run / "eval_metrics.json").read_text())["global_step"] == summary["global_step"]


def _imbalanced_npz(path):
    rng = np.random.default_rng(0)

    def split(counts):
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        x = rng.normal(0, 1.0, (len(y), 4, 4)).astype(np.float32) + y[:, None, None] * 0.6
        return x * 40 + 100, y

    x_train, y_train = split([12, 300])
    x_test, y_test = split([40, 40])
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def test_balanced_class_weights_lift_a_starved_class(capsys, tmp_path):
    data = _imbalanced_npz(tmp_path / "imbalanced.npz")
    recall = {}
    for weighting in ("none", "balanced"):
        run = tmp_path / weighting
        status, errors = cli(capsys, f"--data={data}", "--backbone=mlp", "--train_steps=200", "--batch_size=32", "--learning_rate=0.01",
                             f"--class_weight={weighting}", f"--model_dir={run}")
        assert status == 0 and not errors
        recall[weighting] = json.loads((run / "eval_metrics.json").read_text())["per_class"]["0"]["recall"]
    info = json.loads((tmp_path / "balanced" / "run_info.json").read_text())
    assert info["class_weights"] == pytest.approx([312 / (2 * 12), 312 / (2 * 300)])
    assert recall["balanced"] > recall["none"] + 0.3, recall  # Seen: 0.0 -> 0.575.
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"0": 5.0, "7": 1.0}))
    assert_error(capsys, "names classes absent from the data: 7", f"--data={data}", "--backbone=mlp",
                 f"--class_weight={weights}", f"--model_dir={tmp_path / 'w'}")


def test_metrics_smoothing_and_regularisation(capsys, tmp_path):
    run = tmp_path / "run"
    status, errors = cli(capsys, "--data=digits", "--backbone=mlp", "--train_steps=60", "--label_smoothing=0.1",
                         "--weight_decay=1e-4", "--clip_norm=1.0", "--top_k=3", f"--model_dir={run}")
    assert status == 0 and not errors
    metrics = json.loads((run / "eval_metrics.json").read_text())
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    info = json.loads((run / "run_info.json").read_text())
    assert matrix.sum() == sum(info["counts"]["validation"].values())
    exported = metrics.get("export_metrics", metrics)  # The per-class figures describe the exported model.
    assert np.trace(matrix) / matrix.sum() == pytest.approx(exported["accuracy"], abs=1e-6)
    assert metrics["confusion_matrix"]["labels"] == [str(i) for i in range(10)]
    assert set(metrics["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    assert metrics["top_k_accuracy"] >= metrics["accuracy"] and 0 < metrics["macro_f1"] <= 1
    eval_tags = set()
    for path in glob.glob(str(run / "eval" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            eval_tags |= {v.tag for v in event.summary.value}
    assert {"accuracy", "loss", "macro_f1", "top_k_accuracy"} <= eval_tags  # Scalars in TensorBoard too.
    binary = tmp_path / "binary"
    status, errors = cli(capsys, "--data=digits", "--classes=0,1", "--backbone=mlp", "--label_mode=binary",
                         "--train_steps=30", "--label_smoothing=0.2", "--early_stopping_patience=3",
                         "--early_stopping_metric=auc", f"--model_dir={binary}")
    assert status == 0 and not errors
    assert json.loads((binary / "eval_metrics.json").read_text())["auc"] > 0.9
    assert_error(capsys, "--early_stopping_metric=auc is not reported for this run", "--data=digits",
                 "--backbone=mlp", "--early_stopping_patience=2", "--early_stopping_metric=auc",
                 f"--model_dir={tmp_path / 'x'}")


def test_warm_start_onto_another_class_set(capsys, tmp_path):
    first = tmp_path / "first"
    status, _ = cli(capsys, "--data=digits", "--classes=0,1,2", "--backbone=mlp", "--train_steps=80",
                    f"--model_dir={first}")
    assert status == 0
    second = tmp_path / "second"
    # --calibrate=none: keras_model.h5 holds the weights as trained, compared with the first run's checkpoint.
    status, errors = cli(capsys, "--data=digits", "--classes=2,3,1", "--backbone=mlp", "--train_steps=1",
                         "--calibrate=none", f"--warm_start_from={first}", f"--model_dir={second}")
    assert status == 0 and not errors
    record = json.loads((second / "run_info.json").read_text())["warm_start"]
    assert (record["classes_kept"], record["classes_added"], record["classes_removed"]) == (["2", "1"], ["3"], ["0"])
    old = tf.train.load_checkpoint(str(first / "model.ckpt-80"))
    new = tf.keras.models.load_model(second / "keras_model.h5", compile=False)
    kernel = new.get_layer("probabilities").get_weights()[0]
    old_kernel = old.get_tensor("probabilities/kernel")
    # One step of training moves the copied columns only slightly: they still match their class by name.
    assert np.abs(kernel[:, 0] - old_kernel[:, 2]).max() < 0.05 and np.abs(kernel[:, 2] - old_kernel[:, 1]).max() < 0.05
    trunk_kernel = new.get_layer("mlp").get_layer("fc1").get_weights()[0]
    assert np.abs(trunk_kernel - old.get_tensor("fc1/kernel")).max() < 0.05  # The trunk carried over.
    per_class = json.loads((second / "eval_metrics.json").read_text())["per_class"]
    assert per_class["2"]["recall"] > 0.8 and per_class["1"]["recall"] > 0.8  # Kept classes work at once.


def test_two_phases_under_mirrored_cpu_replicas(capsys, tmp_path):
    run = tmp_path / "run"
    status, errors = cli(capsys, "--data=digits", "--backbone=small_cnn", "--strategy=mirrored", "--num_cpu_replicas=2",
                         "--train_steps=20", "--fine_tune_steps=20", "--fine_tune_learning_rate=5e-4",
                         "--lr_schedule=cosine", "--label_smoothing=0.1",
                         "--class_weight=balanced", "--save_checkpoints_steps=20", f"--model_dir={run}")
    assert status == 0 and not errors
    info = json.loads((run / "run_info.json").read_text())
    assert info["num_replicas"] == 2 and [p["name"] for p in info["phases"]] == ["train", "fine_tune"]
    assert info["phases"][1]["learning_rate"] == pytest.approx(5e-4)
    assert json.loads((run / "eval_metrics.json").read_text())["global_step"] == 40


def test_a_class_without_training_examples_is_named_and_keeps_its_evaluation_weight(capsys, tmp_path):
    """Trial c209: a class whose only images went to validation got no warning, and --class_weight=balanced gave
    it weight 0, which also dropped its validation examples from the evaluation loss."""
    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat([0, 1], 20), np.repeat([0, 1, 2], 5)
    np.savez(tmp_path / "d.npz", x_train=rng.normal(size=(40, 4, 4)).astype(np.float32), y_train=y_train,
             x_test=rng.normal(size=(15, 4, 4)).astype(np.float32), y_test=y_test)
    run = tmp_path / "run"
    status, errors, err = cli(capsys, f"--data={tmp_path / 'd.npz'}", "--backbone=mlp", "--class_weight=balanced",
                              "--dry_run", f"--model_dir={run}", whole_stderr=True)
    assert status == 0 and not errors, err
    assert "class(es) 2 have no training example" in err
    assert json.loads((run / "run_info.json").read_text())["class_weights"] == pytest.approx([40 / (3 * 20)] * 2 + [1.0])


@pytest.mark.parametrize("extra, line", [
    (["--fine_tune_learning_rate=0.01"], "--fine_tune_learning_rate ignored: there is no fine-tuning phase"),
    (["--early_stopping_min_delta=0.1"], "--early_stopping_min_delta ignored: early stopping is off"),
    (["--noema_warmup"], "--noema_warmup ignored: there is no average (give --ema_decay)"),
    (["--warmup_steps=1000"], "--warmup_steps=1000 covers the whole train phase (30 steps)"),
    (["--fine_tune_steps=10", "--fine_tune_freeze=all"], "--fine_tune_freeze=all keeps the whole trunk frozen"),
])
def test_flags_this_plan_leaves_without_effect_are_said(capsys, tmp_path, extra, line):
    """Trial c013/c014/c030/c122/c147: silently ignored or pointless combinations."""
    status, errors, err = cli(capsys, "--data=digits", "--backbone=small_cnn", "--train_steps=30", "--dry_run",
                              *extra, f"--model_dir={tmp_path / 'run'}", whole_stderr=True)
    assert status == 0 and not errors and line in err, err


def test_the_early_stopping_decision_follows_its_evaluation_on_the_console(tmp_path):
    """Trial c086: `WARNING: early stopping at step 100` came before the `eval @ step 100` line it refers to."""
    import restart_cases

    proc = restart_cases.run_to_end(["--data=digits", "--backbone=mlp", "--train_steps=2000", "--learning_rate=1e-7",
                                     "--save_checkpoints_steps=10", "--eval_throttle_secs=0",
                                     "--early_stopping_patience=2", "--early_stopping_min_delta=0.05"], tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stop = json.loads((tmp_path / "r" / "run_info.json").read_text())["early_stopped_at_step"]
    lines = proc.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if f"early stopping at step {stop}:" in line]
    evaluated = [i for i, line in enumerate(lines) if re.match(rf"eval @ step {stop}\b", line)]
    assert len(said) == 1 and len(evaluated) == 1 and evaluated[0] < said[0], proc.stderr
