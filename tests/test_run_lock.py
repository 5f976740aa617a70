"""One run per --model_dir (issue 23, SRE trial B2/B3): a second run is refused with one line naming the holder;
a killed run never locks out its rerun; --unique_run_dir folders do not collide within a second."""
import json
import os
import signal
import subprocess
import time

import restart_cases
from trainer.config import Config, validate
import pytest

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

ARGS = ["--data=digits", "--classes=0,1,2", "--backbone=mlp", "--save_checkpoints_steps=50", "--train_steps=100000"]


@pytest.mark.slow  # A kill (16 s): make test's 20 minutes.
def test_a_second_run_in_a_folder_in_use_is_refused_and_a_killed_one_releases_it(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(restart_cases._command(ARGS, run), cwd=restart_cases.REPO, env=restart_cases._env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while restart_cases._latest_step(run) < 50 and time.time() < deadline:
            time.sleep(0.2)
        assert restart_cases._latest_step(run) >= 50
        second = restart_cases.run_to_end(ARGS, run)
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert second.returncode == 1 and len(errors) == 1, second.stderr[-2000:]
        assert f"is in use by another run (pid {first.pid} on " in errors[0]
        assert first.poll() is None  # The first run goes on, untouched.
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL released the lock: the same command resumes (a short plan: it stops at once).
    again = restart_cases.run_to_end(ARGS[:-1] + ["--train_steps=1"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / ".trainer.lock").read_text())["pid"] != first.pid


def test_unique_run_dirs_started_in_the_same_second_differ(monkeypatch):
    monkeypatch.delenv("CLOUD_ML_JOB_ID", raising=False)
    monkeypatch.delenv("AIP_MODEL_DIR", raising=False)
    dirs = {validate(Config(data="digits", model_dir="rt", unique_run_dir=True)).model_dir for _ in range(20)}
    assert len(dirs) == 20 and all(os.path.dirname(d) == "rt" for d in dirs)


def test_unique_runs_with_a_checkpoint_dir_each_train_in_their_own(tmp_path):
    """Wrappers trial B2 (silent): the second --unique_run_dir run resumed the first's --checkpoint_dir, trained
    nothing, exited 0 and reported the first run's model as its own. Run from a working folder, relative paths."""
    args = ["--data=digits", "--classes=0,1,2", "--backbone=mlp", "--train_steps=20", "--eval_throttle_secs=0",
            "--unique_run_dir", "--model_dir=runs", "--checkpoint_dir=ckpts"]
    import sys

    made = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=tmp_path, env=restart_cases._env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "nothing to train" not in proc.stderr, proc.stderr[-2000:]
        made.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert made[0]["model_dir"] != made[1]["model_dir"] and all(m["global_step"] == 20 for m in made)
    ids = [os.path.basename(m["model_dir"]) for m in made]
    assert sorted(os.listdir(tmp_path / "ckpts")) == sorted(ids)  # <checkpoint_dir>/<run id>, one each.
    for run_id in ids:
        assert (tmp_path / "ckpts" / run_id / "model.ckpt-20.index").exists()
