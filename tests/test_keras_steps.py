"""The Keras engine's K-step loop (--steps_per_execution, issue 37): Model.fit runs K steps per call into the device
and the host reads the step, the loss and stop requests once per window. The contract holds as with K=1:
checkpoints and evaluations at the same steps, the same trained weights, a signal honoured within one window and
a resume that ends as the uninterrupted run; a resume off the window grid (saved with another K) says so and
still ends on the same weights; the refusals are one `error:` line each."""
import json
import re

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO  # noqa: F401 - puts the repository on the path.

# Runs on TensorFlow 2.21 (the Keras engine's runtime); on TF 2.15 with `make test-slow` only.
pytestmark = [pytest.mark.tf221, pytest.mark.keras_engine]

# Phase 1: steps 0..30 (windows of K from 0; the last one cut to 2 steps when K=4), phase 2: 30..46.
ARGS = ["--engine=keras", "--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--batch_size=16",
        "--train_steps=30", "--fine_tune_steps=16", "--save_checkpoints_steps=8", "--eval_throttle_secs=0",
        "--keep_checkpoint_max=100", "--optimizer=sgd", "--learning_rate=0.05", "--lr_schedule=cosine"]
SCHEDULED = [8, 16, 24, 30, 38, 46]  # first_step + k x 8 in each phase, and each phase's last step.


def checkpoint_steps(run):
    return sorted({int(re.search(r"ckpt-(\d+)\.index$", p.name).group(1)) for p in run.glob("*.ckpt-*.index")})


def weights(run, step):
    reader = tf.train.load_checkpoint(str(run / f"model.ckpt-{step}"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if not n.startswith("training/") and "optimizer" not in n.lower()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)


def summary_of(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
    """The reference: one step per call (the loop as it was)."""
    run = tmp_path_factory.mktemp("k1") / "run"
    summary = summary_of(restart_cases.run_to_end(ARGS + ["--steps_per_execution=1"], run))
    return run, summary


@pytest.mark.parametrize("k", ["4", "auto"])
def test_windows_keep_the_checkpoint_steps_and_the_weights(tmp_path, one_step_run, k):
    reference, ref_summary = one_step_run
    run = tmp_path / "run"
    summary = summary_of(restart_cases.run_to_end(ARGS + ([f"--steps_per_execution={k}"] if k != "auto" else []), run))
    assert checkpoint_steps(run) == checkpoint_steps(reference) == SCHEDULED
    assert summary["global_step"] == ref_summary["global_step"] == 46
    assert summary["accuracy"] == pytest.approx(ref_summary["accuracy"], abs=1e-6)
    for step in SCHEDULED:
        assert_same_weights(weights(run, step), weights(reference, step))
    assert json.loads((run / "eval" / "processed.json").read_text()) == {"step": 46}
    assert restart_cases._evaluated_steps(run) == restart_cases._evaluated_steps(reference) == SCHEDULED
    # The training scalars: logged at each fit's first window end, at the step counted from fit's batch index, with
    # the rate the schedule gives the step trained (a wrong count would show here).
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    window = 4 if k == "4" else 8  # auto: the largest divisor of 8 up to 10.
    rates = restart_cases._scalars(run, "learning_rate")
    assert sorted(rates) == [window, 30 + window]
    for step, value in rates.items():
        assert value == pytest.approx(restart_cases._rate(phases, step - 1), rel=1e-5), step


@pytest.mark.parametrize("step", [5, 33])
def test_a_signal_stops_within_one_window_and_the_rerun_ends_as_the_whole_run(tmp_path, one_step_run, step):
    """SIGTERM once the checkpoint at `step`'s schedule is on disk: the run saves at the end of the window it is in
    (a window boundary of its phase), exits 143, and the same command ends on the uninterrupted run's weights."""
    reference, ref_summary = one_step_run
    run, args = tmp_path / "run", ARGS + ["--steps_per_execution=4"]
    code, err, what = restart_cases.interrupted_run(args, run, {"step": step, "how": "term"})
    assert code == 143 and what == "signal sent", err[-2000:]
    saved = restart_cases._latest_step(run)
    first = 0 if saved <= 30 else 30
    assert (saved - first) % 4 == 0 or saved in (30, 46), saved
    again = summary_of(restart_cases.run_to_end(args, run))
    assert again["global_step"] == 46 and again["accuracy"] == pytest.approx(ref_summary["accuracy"], abs=1e-6)
    assert set(SCHEDULED) <= set(checkpoint_steps(run))
    assert_same_weights(weights(run, 46), weights(reference, 46))


@pytest.mark.slow  # 18 s: make test's 20 minutes.
def test_a_resume_off_the_window_grid_says_so_and_ends_on_the_same_weights(tmp_path, one_step_run):
    """A run killed right after its checkpoint at step 13 (K=1, a checkpoint every 13 steps), resumed with K=4 and
    a checkpoint every 8: one console line; each later checkpoint of the phase falls at the first window end past
    its scheduled step (17, 25, then the phase's last step); phase 2 starts on its own grid; the final weights are
    the uninterrupted run's."""
    reference, _ = one_step_run
    run = tmp_path / "run"
    first = [a for a in ARGS if not a.startswith("--save_checkpoints_steps")] + [
        "--save_checkpoints_steps=13", "--steps_per_execution=1"]
    code, err, what = restart_cases.interrupted_run(first, run, {"point": "checkpoint_saved", "how": "kill"})
    assert code == -9 and restart_cases._latest_step(run) == 13, err[-2000:]
    proc = restart_cases.run_to_end(ARGS + ["--steps_per_execution=4"], run)
    again = summary_of(proc)
    assert "resuming at step 13, off the 4-step windows of this phase (from step 0" in proc.stderr
    assert again["global_step"] == 46
    assert checkpoint_steps(run) == [13, 17, 25, 30, 38, 46]
    assert_same_weights(weights(run, 46), weights(reference, 46))


@pytest.mark.parametrize("extra, fragment", [
    (["--steps_per_execution=3"], "--steps_per_execution=3 must divide --save_checkpoints_steps=8"),
    (["--steps_per_execution=-1"], "--steps_per_execution=-1 must be 0 (auto) or positive"),
])
def test_a_window_that_cannot_keep_the_schedule_is_one_error_line(tmp_path, extra, fragment):
    proc = restart_cases.run_to_end(ARGS + extra, tmp_path / "run")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not list((tmp_path / "run").glob("*.ckpt-*"))
