"""A multi-worker job that Vertex AI restarts whole (issue 36: `scheduling.restart_job_on_worker_restart`, on with
`submit_vertex.py --spot`): one task is lost, every task is started again with the same TF_CONFIG and the same flags,
and the run ends as the uninterrupted one does. Real processes through trainer.launch_local, which stops the other
tasks when one dies (what Vertex does before restarting them all); the matrix is engine x lost task x moment (phase 1,
phase 2), each compared with the uninterrupted run of its engine: the same final step, the same phases, every phase
trained what it should, and the same final weights."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import restart_cases
from conftest import REPO, PerEngine
from trainer.config import resolve_engine

pytestmark = [pytest.mark.slow, pytest.mark.tf221]
ENGINES = ["keras"] + (["estimator"] if resolve_engine(None) == "estimator" else [])
ARGS = ["--data=digits", "--classes=0,1,2,3,4,5", "--backbone=small_cnn", "--train_steps=40", "--fine_tune_steps=30",
        "--freeze=all", "--fine_tune_freeze=none", "--optimizer=sgd", "--learning_rate=0.05", "--save_checkpoints_steps=10",
        "--eval_throttle_secs=0", "--batch_size=16", "--keep_checkpoint_max=100", "--seed=3"]
MOMENTS = {"phase1": 20, "phase2": 50}
# The Estimator engine trains one phase per multi-worker job (a second is refused: TF 2.15's collectives fail at the
# boundary), so its "phase2" moment is a later point of its one phase.
ONE_PHASE = ["--train_steps=70", "--fine_tune_steps=0"]
CASES = [(engine, victim, moment) for engine in ENGINES for victim in ("chief", "worker0") for moment in MOMENTS]


def command(engine, model_dir):
    args = ARGS if engine == "keras" else ARGS + ONE_PHASE
    return [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--timeout=500", "--",
            f"--engine={engine}", *args, f"--model_dir={model_dir}"]


def test_two_phases_in_one_multi_worker_job_are_refused_on_the_estimator_engine(tmp_path):
    if "estimator" not in ENGINES:
        pytest.skip("TensorFlow 2.15 only")
    proc = subprocess.run([sys.executable, "-m", "trainer.launch_local", "--workers=1", "--timeout=300", "--",
                           "--engine=estimator", *ARGS, f"--model_dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=400, env=restart_cases._env())
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "[chief] error: --engine=estimator cannot train 2 phases in one multi-worker job" in proc.stderr
    assert "Traceback" not in proc.stderr and not list((tmp_path / "run").glob("model.ckpt-*"))


def run_cluster(engine, model_dir):
    proc = subprocess.run(command(engine, model_dir), cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=restart_cases._env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def final_weights(model_dir, step):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(restart_cases._checkpoint_at(model_dir, step))
    names = [n for n in reader.get_variable_to_shape_map()
             if not n.startswith(("training/", "optimizer/")) and "OPTIMIZER_SLOT" not in n and n != "global_step"
             and "/replica_" not in n and "save_counter" not in n]
    return {n: reader.get_tensor(n) for n in names}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    def make(engine):
        model_dir = tmp_path_factory.mktemp(f"whole-{engine}") / "run"
        proc, summary = run_cluster(engine, model_dir)
        return model_dir, summary, json.loads((model_dir / "run_info.json").read_text())

    return PerEngine(make)


@pytest.mark.parametrize("engine,victim,moment", CASES)
def test_a_cluster_restarted_whole_ends_as_the_uninterrupted_run(tmp_path, uninterrupted, engine, victim, moment):
    model_dir = tmp_path / "run"
    log = tmp_path / "first.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(command(engine, model_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                text=True, env=restart_cases._env())
        deadline = time.time() + 400
        while restart_cases._latest_step(model_dir) < MOMENTS[moment] and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)
        pids = dict(re.findall(r"(\w+) \(pid (\d+)\)", log.read_text()))
        assert victim in pids, log.read_text()[-3000:]
        os.kill(int(pids[victim]), signal.SIGKILL)  # A lost VM: no SIGTERM, no last checkpoint.
        code = proc.wait(timeout=180)
    first = log.read_text()
    assert code != 0 and f"task {victim} was killed by signal 9" in first, first[-3000:]
    lost_at = restart_cases._latest_step(model_dir)
    assert MOMENTS[moment] <= lost_at < 70, first[-3000:]

    again, summary = run_cluster(engine, model_dir)  # Vertex starts every task again with the same command.
    whole_dir, whole, whole_info = uninterrupted[engine]
    assert f"resuming from step {lost_at}" in again.stderr, again.stderr[-3000:]
    assert summary["global_step"] == whole["global_step"] == 70
    info = json.loads((model_dir / "run_info.json").read_text())
    assert restart_cases._comparable(info["phases"]) == restart_cases._comparable(whole_info["phases"])
    assert restart_cases.changed_weights(model_dir, info["phases"]) == \
        restart_cases.changed_weights(whole_dir, whole_info["phases"])
    ours, theirs = final_weights(model_dir, 70), final_weights(whole_dir, 70)
    assert sorted(ours) == sorted(theirs) and ours
    worst = max(float(np.max(np.abs(ours[n] - theirs[n]))) for n in ours)
    assert worst < 1e-6, f"final weights differ from the uninterrupted run's by up to {worst}"
