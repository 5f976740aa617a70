"""Preemption and resume (real processes, SIGKILL at several phases, SIGTERM), numeric failures."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import REPO, last_json, last_run_log, run_cli

ARGS = ["--data=digits", "--backbone=small_cnn", "--train_steps=300", "--save_checkpoints_steps=100",
        "--eval_throttle_secs=0"]


def start(model_dir, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # --verbose: the phases are found by TensorFlow's own log lines, which the default console hides.
    return subprocess.Popen([sys.executable, "-m", "trainer.task", *ARGS, f"--model_dir={model_dir}", "--verbose",
                             *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc, pattern, timeout=120):
    """Reads the log until a line matches; returns that line."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        if re.search(pattern, line):
            return line
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError(f"never saw {pattern!r}")


def assert_complete(model_dir, steps=300):
    for name in ("model_summary.json", "run_info.json", "eval_metrics.json", "keras_model.h5"):
        assert (model_dir / name).exists(), name
    assert not list(model_dir.glob("*.tmp-*")) and not list(model_dir.glob("export/*/temp-*"))
    exports = [p for p in (model_dir / "export" / "best").iterdir() if (p / "saved_model.pb").exists()]
    assert exports
    tf.keras.models.load_model(model_dir / "keras_model.h5", compile=False)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"model.ckpt-{steps}")


@pytest.mark.parametrize("phase, pattern", [
    ("training", r"checkpoint saved at step 100\b"),
    pytest.param("evaluation", r"Starting evaluation", marks=pytest.mark.slow),  # The kill matrix: make test-slow.
    pytest.param("export", r"Performing best model export|Signatures INCLUDED in export", marks=pytest.mark.slow),
    pytest.param("final files", r"Loss for final step", marks=pytest.mark.slow),
])
def test_sigkill_then_rerun_finishes_the_run(tmp_path, phase, pattern):
    model_dir = tmp_path / "run"
    proc = start(model_dir)
    wait_for(proc, pattern)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = tf.train.latest_checkpoint(str(model_dir))
    again = run_cli(*ARGS, f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_json(again.stdout)["global_step"] == 300
    if killed_at and not killed_at.endswith("-0"):
        # Resumed from the last checkpoint, not from zero.
        assert f"Restoring parameters from {killed_at}" in last_run_log(model_dir)
    assert_complete(model_dir)


def test_sigterm_saves_a_checkpoint_and_exits_143_then_resumes(tmp_path):
    model_dir = tmp_path / "run"
    proc = start(model_dir, "--train_steps=100000", "--save_checkpoints_steps=100000")
    wait_for(proc, r"checkpoint saved at step 0\b")
    time.sleep(1.5)  # Mid-training, far from any scheduled checkpoint.
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    output = proc.stdout.read()
    assert proc.wait(timeout=60) == 143
    assert time.time() - sent < 30, "exits promptly"
    step = int(re.search(r"preempted at step (\d+)", output).group(1))
    assert step > 0
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"model.ckpt-{step}")
    again = run_cli(*ARGS[:2], f"--train_steps={step + 20}", "--eval_throttle_secs=0", f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Restoring parameters from {model_dir}/model.ckpt-{step}" in last_run_log(model_dir)
    assert last_json(again.stdout)["global_step"] == step + 20


def test_nan_loss_stops_with_an_error_and_exports_nothing(tmp_path):
    model_dir = tmp_path / "run"
    proc = run_cli("--data=digits", "--backbone=mlp", "--optimizer=sgd", "--learning_rate=1e30",
                   "--train_steps=50", "--eval_throttle_secs=0", f"--model_dir={model_dir}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert re.search(r"NaN or infinite at step \d+", line)
    assert not (model_dir / "keras_model.h5").exists() and not (model_dir / "eval_metrics.json").exists()
    assert not (model_dir / "export").exists()
