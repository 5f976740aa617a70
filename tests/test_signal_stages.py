"""A signal ends the run at every stage after training too (new-user trial 2026-12-04 #3: a SIGTERM during the final
evaluation, export or report was ignored, exit 0): 143 (SIGTERM) or 130 (SIGINT), the files already written kept,
nothing promoted after it, and the same command completes the rest. The instants are fault points
(trainer.util.faultpoints) where the process signals itself, so each is hit every time, not by luck."""
import json

import pytest

import restart_cases
from trainer.config import resolve_engine

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

ENGINES = ["keras"] + (["estimator"] if resolve_engine(None) == "estimator" else [])
ARGS = ["--data=digits", "--classes=0,1,2", "--backbone=small_cnn", "--train_steps=20", "--save_checkpoints_steps=10",
        "--eval_throttle_secs=0", "--batch_size=16"]
# (fault point, engines it exists on): the last step's evaluation runs inside Model.fit's callback on the Keras engine.
POINTS = [("final_step_evaluated", ["keras"]), ("finish_evaluation", ENGINES), ("finish_export", ENGINES),
          ("finish_promotion", ENGINES), ("finish_report", ENGINES)]
# The stage matrix: `make test` stops each engine in one stage after training, `make test-slow` in every one.
CASES = [pytest.param(point, engine, marks=() if point == "finish_evaluation" else pytest.mark.slow)
         for point, engines in POINTS for engine in engines if engine in ENGINES]


@pytest.mark.parametrize("point,engine", CASES)
def test_a_signal_after_training_stops_the_run_and_the_rerun_completes(tmp_path, point, engine):
    run, champions = tmp_path / "run", tmp_path / "champions"
    args = ARGS + [f"--engine={engine}", f"--champion_dir={champions}"]
    code, err, _ = restart_cases.interrupted_run(args, run, {"point": point, "how": "term"})
    assert code == 143, err[-3000:]
    assert "preempted" in err and "Traceback" not in err, err[-3000:]
    promoted_before = point == "finish_report"  # The report follows the promotion.
    assert (champions / "CHAMPION.json").exists() == promoted_before, "promoted after the signal"
    assert (run / "checkpoint").exists()
    again = restart_cases.run_to_end(args, run)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 20
    for name in ("eval_metrics.json", "keras_model.h5", "run_info.json", "report.html"):
        assert (run / name).exists(), name
    if engine == "keras":  # Wrappers trial U11: one process, the step on record (the Estimator's: see README).
        assert not (run / "eval_chief_final").exists()
    assert json.loads((champions / "CHAMPION.json").read_text())["source_run"] == str(run)
    page = (run / "report.html").read_text()  # New-user trial c024: `champion | None (version None)`.
    assert "<td>champion</td><td>none yet</td>" in page and "None (version None)" not in page
    versions = [p for p in champions.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(versions) == 1, versions  # The rerun knows it promoted itself: no second version.


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rerun_after_an_early_stop_in_phase_2_says_what_trained(tmp_path, engine):
    """New-user trial #7 (`fine_tune (steps 20..100) not trained` for a phase that trained to its stop), c077 (the
    phase record kept its planned end without a word), c081 (a larger patience on rerun was ignored silently)."""
    run = tmp_path / "run"
    args = ["--data=digits", "--classes=0,1,2", "--backbone=mlp", "--train_steps=30", "--fine_tune_steps=100",
            "--fine_tune_learning_rate=1e-9", "--save_checkpoints_steps=10", "--eval_throttle_secs=0",
            "--early_stopping_metric=loss", "--early_stopping_min_delta=0.001", "--early_stopping_patience=2",
            f"--engine={engine}"]
    first = restart_cases.run_to_end(args, run)
    assert first.returncode == 0, first.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    stop = info["early_stopped_at_step"]
    assert 30 < stop < 130, info
    fine_tune = [p for p in info["phases"] if p["name"] == "fine_tune"][0]
    assert fine_tune["stopped_at_step"] == stop and fine_tune["last_step"] == 130
    page = (run / "report.html").read_text()  # New-user trial c024: the phases were raw JSON objects.
    assert "<th>phase</th>" in page and "<td>fine_tune</td>" in page and '{&quot;first_step' not in page
    trainable = f"{fine_tune['trainable_params']:,} trainable in the last phase"  # New-user c088: phase 1's count.
    assert trainable in page, page[:3000]
    again = restart_cases.run_to_end(args[:-2] + ["--early_stopping_patience=5", f"--engine={engine}"], run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"stopped early at step {stop} (fine_tune, 30..{stop} of 30..130)" in again.stderr, again.stderr
    assert "not trained" not in again.stderr
    assert "--early_stopping_patience=5 has no effect here: the stop was decided with patience 2" in again.stderr


def test_a_checkpoint_killed_before_its_evaluation_is_evaluated_with_a_line_saying_why(tmp_path):
    """New-user trial c011: after a kill, `eval @ step 60` (phase 1's checkpoint) appeared after the phase 2 header
    with no word of why. The catch-up evaluation is announced."""
    run = tmp_path / "run"
    args = ARGS + ["--engine=keras"]
    code, err, _ = restart_cases.interrupted_run(args, run, {"point": "checkpoint_saved", "how": "kill"})
    assert code == -9, err[-2000:]
    again = restart_cases.run_to_end(args, run)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if line.startswith("catching up: step 10 was saved before")]
    evaluated = [i for i, line in enumerate(lines) if line.startswith("eval @ step 10:")]
    assert len(said) == 1 and len(evaluated) == 1 and said[0] < evaluated[0], again.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_a_signal_during_an_evaluation_in_training_stops_it_and_the_rerun_evaluates_that_step(tmp_path, engine):
    """Issue 36: a SIGTERM during a periodic evaluation (inside training, where a signal only sets a flag) waited for
    the whole evaluation, as long as the evaluation data takes (mobilenet_v2 at 224 on 2 CPUs: 9 s for 566 images,
    44-48 s for 4,852, past a Spot VM's 30 s), then its export (and on the Keras engine one more step). It stops at
    the next batch now: the checkpoint evaluated is on disk, and the same command evaluates that step on resuming."""
    run = tmp_path / "run"
    args = ARGS + [f"--engine={engine}"]
    code, err, _ = restart_cases.interrupted_run(args, run, {"point": "evaluation_batch", "how": "term"})
    assert code == 143, err[-3000:]
    assert "SIGTERM received during the evaluation of step 10: stopping it" in err, err[-3000:]
    assert "preempted: checkpoint saved at step 10 (before its evaluation)" in err, err[-3000:]
    assert "preempted at step 10 (SIGTERM)" in err and "Traceback" not in err, err[-3000:]
    assert "eval @ step 10" not in err, "the evaluation ran to its end"
    assert 'model_checkpoint_path: "model.ckpt-10"' in (run / "checkpoint").read_text()
    assert not (run / "export" / "best").exists() or not any((run / "export" / "best").iterdir())
    again = restart_cases.run_to_end(args, run)
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "catching up: step 10 was saved before the interruption and not evaluated yet" in again.stderr
    assert "eval @ step 10:" in again.stderr and "eval @ step 20:" in again.stderr, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["global_step"] == 20
