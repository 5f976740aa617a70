"""Signals through the wrappers (wrappers trial B3, B4, B6; SRE trial W3, W4): SIGTERM or SIGINT sent to
`trainer.launch_local` or to `scripts/retrain.sh` (also as a container's PID 1) reaches the trainer, which saves its
preemption checkpoint; nothing is left running, nothing is promoted or registered after the signal, and the same
command then finishes. A peer's death leaves no traceback on the launcher's console. Real processes throughout."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

KERAS = ["--engine=keras", "--data=digits", "--backbone=small_cnn", "--image_size=16", "--eval_throttle_secs=0",
         "--batch_size=32", "--save_checkpoints_steps=20"]
# SIGINT goes the same way as SIGTERM: its case is in `make test-slow` only.
# Multi-process kills: make test-slow (make test's 20 minutes on 2 cores; clusters still train in make test:
# tests/test_keras_engine.py's launch_local case, tests/test_distribution.py's chief, worker and evaluator).
SIGNALS = [pytest.param(signal.SIGTERM, 143, "preempted", id="SIGTERM", marks=pytest.mark.slow),
           pytest.param(signal.SIGINT, 130, "interrupted", id="SIGINT", marks=pytest.mark.slow)]


def processes_of(marker: str):
    """The command lines of running processes that mention `marker` (a run's model_dir)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the first model.ckpt-* of `folder` (or of one of its run folders) exists, while `proc` runs."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(folder.glob("model.ckpt-*.index")) or list(folder.glob("*/model.ckpt-*.index")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint in {folder} (exit status {proc.poll()})")


def latest_step(model_dir: Path) -> int:
    return int(re.search(r'model_checkpoint_path: "model\.ckpt-(\d+)"', (model_dir / "checkpoint").read_text())[1])


def assert_nothing_left(marker: str) -> None:
    for _ in range(20):  # A few seconds: a process being reaped may still be listed.
        if not processes_of(marker):
            return
        time.sleep(0.25)
    raise AssertionError(f"still running: {processes_of(marker)}")


def launch_command(model_dir: Path, logs: Path, *extra: str):
    return [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--evaluator", f"--log_dir={logs}",
            "--timeout=300", *extra, "--", *KERAS, "--train_steps=300", f"--model_dir={model_dir}"]


@pytest.mark.parametrize("sig, status, word", SIGNALS)
def test_a_signal_to_launch_local_stops_every_task_with_a_checkpoint_and_the_same_command_finishes(
        tmp_path, sig, status, word):
    model_dir, logs = tmp_path / "mw", tmp_path / "logs"
    command = launch_command(model_dir, logs)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        try:
            wait_for_checkpoint(model_dir, proc)
            proc.send_signal(sig)
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    console = (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
    assert code == status, console[-3000:]
    assert "Traceback" not in console and "KeyboardInterrupt" not in console, console[-3000:]
    assert not re.search(r"^\[\w+\] /job:", console, re.M), console  # Trial U6: TensorFlow's stray device line.
    lines = console.splitlines()
    said = [line for line in lines if line.startswith(f"launch_local: {sig.name} received; passing it on to")]
    assert said and said[0].endswith(f"(exit status {status})"), console[-3000:]
    for name in ("chief", "worker0", "evaluator"):
        stopped = [line for line in lines if line.startswith(f"launch_local: stopped {name} (")]
        assert len(stopped) == 1 and stopped[0].startswith(f"launch_local: stopped {name} (status {status}); ") \
            and stopped[0].endswith(f" in {logs / name}.log"), console[-3000:]
    saved = latest_step(model_dir)
    assert 20 <= saved < 300
    assert f"{word}: checkpoint saved at step {saved}" in (model_dir / "train.log").read_text()
    assert_nothing_left(str(model_dir))
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["global_step"] == 300
    assert f"[chief] model_dir: {model_dir} (300 steps, resuming from step {saved})" in again.stderr, \
        again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert_nothing_left(str(model_dir))


@pytest.mark.slow  # Multi-process kill: make test-slow.
def test_a_killed_chief_leaves_no_traceback_on_the_launchers_console(tmp_path):
    """Trial B4/W3: the worker's traceback (its collective op aborted by the lost chief) went to the console before
    the launcher noticed the chief's death; now it stays in the worker's log, counted in its summary line."""
    model_dir, logs = tmp_path / "mw", tmp_path / "logs"
    command = launch_command(model_dir, logs, "--grace_secs=10")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = proc.stderr.readline()
        chief = int(re.search(r"chief \(pid (\d+)\)", started)[1])
        wait_for_checkpoint(model_dir, proc)
        time.sleep(1)  # Mid-step, not in the checkpoint's save: the worker's traceback then came 3 in 3 times.
        os.kill(chief, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 137, err[-3000:]
    assert "Traceback" not in out + err, err[-5000:]
    after = err[err.index("launch_local: task chief"):].splitlines()
    assert after[0] == "launch_local: task chief was killed by signal 9 (SIGKILL); stopping the others (exit status 137)"
    assert len(after) == 3, after
    for name, line in zip(("worker0", "evaluator"), after[1:]):
        assert line.startswith(f"launch_local: stopped {name} (") and line.endswith(f"in {logs / name}.log"), line
        counted = re.search(r"(\d+) traceback\(s\)", line)
        if counted:  # Kept in the task's log file.
            assert (logs / f"{name}.log").read_text().count("Traceback (most recent call last):") >= int(counted[1])
    assert_nothing_left(str(model_dir))


def retrain_command(runs: Path, champion: Path):
    return ["bash", "scripts/retrain.sh", *KERAS, "--train_steps=300", f"--model_dir={runs}",
            f"--champion_dir={champion}"]


def retrain_env(**extra):
    # A fixed run id, as Vertex AI gives a restarted job: the same command resumes the same run folder.
    return dict(os.environ, PYTHON=sys.executable, CLOUD_ML_JOB_ID="job1", PROJECT="proj", REGISTER_DRY_RUN="1",
                SERVING_IMAGE="us-central1-docker.pkg.dev/proj/trainer/serve:1", **extra)


@pytest.mark.slow  # A kill through a wrapper (19 s per leg): make test's 20 minutes.
def test_retrain_sh_passes_sigterm_to_the_trainer_and_neither_promotes_nor_registers(tmp_path):
    """Trial B6: bash exited at once and the trainer trained on and promoted. Now the trainer saves and exits 143,
    the script exits 143 after it; the same command then resumes, promotes and registers (dry run)."""
    runs, champion = tmp_path / "runs", tmp_path / "champion"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(retrain_command(runs, champion), cwd=REPO, env=retrain_env(), stdout=out, stderr=err)
        try:
            wait_for_checkpoint(runs, proc)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert code == 143, stderr[-3000:]
    saved = latest_step(runs / "job1")
    assert 20 <= saved < 300
    assert f"preempted at step {saved} (SIGTERM)" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    assert_nothing_left(str(runs))
    time.sleep(2)  # A trainer left running would promote after the script's end (trial B6).
    assert not (champion / "CHAMPION.json").exists()
    assert stdout == "" and "projects/proj" not in stderr  # Nothing registered.
    again = subprocess.run(retrain_command(runs, champion), cwd=REPO, env=retrain_env(), capture_output=True,
                           text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    summary_line, _, model_json = again.stdout.partition("\n")
    summary = json.loads(summary_line)
    assert summary["global_step"] == 300 and summary["model_dir"] == str(runs / "job1")
    assert f"resuming from step {saved}" in again.stderr, again.stderr[-3000:]
    pointer = json.loads((champion / "CHAMPION.json").read_text())
    assert pointer["source_run"] == summary["model_dir"]
    assert f"{champion}/{pointer['version']}/model" in model_json and "projects/proj" in again.stderr
    assert_nothing_left(str(runs))


def test_retrain_sh_as_pid_1_passes_sigterm_to_the_trainer(tmp_path):
    """`ENTRYPOINT ["bash", ".../retrain.sh"]`: the script is PID 1 of the container and alone gets `docker stop`'s
    SIGTERM; the trainer must still get it and save (trial B6: it was SIGKILLed mid-step with the namespace)."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here (unshare needs root): {probe.stderr.strip()}")
    runs, champion = tmp_path / "runs", tmp_path / "champion"
    command = ["unshare", "--pid", "--fork", "--mount-proc", *retrain_command(runs, champion)]
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=retrain_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_checkpoint(runs, proc)
            children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                                      text=True).stdout.split()
            assert len(children) == 1, children  # bash, PID 1 of the namespace.
            os.kill(int(children[0]), signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    stderr = (tmp_path / "err").read_text()
    assert code == 143, stderr[-3000:]
    saved = latest_step(runs / "job1")
    assert 20 <= saved < 300
    assert f"preempted: checkpoint saved at step {saved}" in (runs / "job1" / "train.log").read_text()
    assert f"preempted at step {saved} (SIGTERM)" in stderr, stderr[-3000:]
    assert_nothing_left(str(runs))
    assert not (champion / "CHAMPION.json").exists()


@pytest.mark.slow  # Multi-process kill: make test-slow.
def test_a_launcher_killed_outright_leaves_no_task_running(tmp_path):
    """SIGKILL to the launcher passes nothing on by itself: each task gets SIGTERM from the kernel (parent-death
    signal) and stops, so no orphan keeps the run's lock; the same command then finishes. (Whether a task's last
    line reaches train.log depends on the moment: its console pipe died with the launcher.)"""
    model_dir, logs = tmp_path / "mw", tmp_path / "logs"
    command = launch_command(model_dir, logs)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)
        wait_for_checkpoint(model_dir, proc)
        proc.kill()
        proc.wait(timeout=30)
    for _ in range(120):  # The tasks save their preemption checkpoint and stop: well within 30 s.
        if not processes_of(str(model_dir)):
            break
        time.sleep(0.25)
    assert_nothing_left(str(model_dir))
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert latest_step(model_dir) == 300


def test_demo_sh_passes_sigterm_to_the_trainer(tmp_path):
    """scripts/demo.sh ran the trainer without exec or a trap: a SIGTERM to the script did not reach it."""
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_DIR=str(out), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(out / "base", proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err[-2000:]
    assert "preempted" in err and "Traceback" not in err, err[-2000:]
    assert_nothing_left(str(out))
