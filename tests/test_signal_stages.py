"""A signal ends the run at every stage after training too (new-user trial 2026-12-04 #3: a SIGTERM during the final
evaluation, export or report was ignored, exit 0): 143 (SIGTERM) or 130 (SIGINT), the files already written kept,
nothing promoted after it, and the same command completes the rest. The instants are fault points
(trainer.util.faultpoints) where the process signals itself, so each is hit every time, not by luck."""
import json

import pytest

import restart_cases
from trainer.config import resolve_engine

ENGINES = ["keras"] + (["estimator"] if resolve_engine(None) == "estimator" else [])
ARGS = ["--data=digits", "--classes=0,1,2", "--backbone=small_cnn", "--train_steps=20", "--save_checkpoints_steps=10",
        "--eval_throttle_secs=0", "--batch_size=16"]
# (fault point, engines it exists on): the last step's evaluation runs inside Model.fit's callback on the Keras engine.
POINTS = [("final_step_evaluated", ["keras"]), ("finish_evaluation", ENGINES), ("finish_export", ENGINES),
          ("finish_promotion", ENGINES), ("finish_report", ENGINES)]
CASES = [(point, engine) for point, engines in POINTS for engine in engines if engine in ENGINES]


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
    assert json.loads((champions / "CHAMPION.json").read_text())["source_run"] == str(run)
    versions = [p for p in champions.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(versions) == 1, versions  # The rerun knows it promoted itself: no second version.
