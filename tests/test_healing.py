"""State that heals instead of looping (issue 23): a damaged latest checkpoint, a garbage or missing `checkpoint`
state file, a damaged run_info.json or early_stopping.json. Vertex AI reruns the same command after a failure, so
each of these used to be a crash loop or a silent restart from step 0."""
import json

import pytest

import restart_cases
from trainer.model.schedules import PhaseSchedule

ARGS = ["--data=digits", "--classes=0,1,2", "--backbone=mlp", "--save_checkpoints_steps=10", "--eval_throttle_secs=0",
        "--keep_checkpoint_max=10", "--lr_schedule=cosine"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 30-step run to damage (copied per test)."""
    run = tmp_path_factory.mktemp("base") / "run"
    proc = restart_cases.run_to_end(ARGS + ["--train_steps=30"], run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def _copy(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


@pytest.mark.parametrize("damage", ["truncate_index", "zero_data", "flip_data", "delete_data", "truncate_data"])
def test_a_damaged_latest_checkpoint_resumes_from_the_newest_readable(finished, tmp_path, damage):
    """SRE trial B4: a traceback on every restart; the intact older checkpoint was never tried."""
    run = _copy(finished, tmp_path)
    index = run / "model.ckpt-30.index"
    data = next(run.glob("model.ckpt-30.data-*"))
    if damage == "truncate_index":
        index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    elif damage == "zero_data":
        data.write_bytes(b"\0" * len(data.read_bytes()))
    elif damage == "truncate_data":  # SRE trial 2026-12-04: `IndexError: Read less bytes` on every restart.
        data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    elif damage == "flip_data":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 4] = b"\xff\xff\xff\xff"
        data.write_bytes(bytes(raw))
    else:
        data.unlink()
    again = restart_cases.run_to_end(ARGS + ["--train_steps=40"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert "resuming from model.ckpt-20: skipped the damaged model.ckpt-30" in again.stderr
    served = json.loads((run / "eval_metrics.json").read_text())  # The last evaluation apart when not the best.
    assert served.get("last_evaluation", served)["global_step"] == 40


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_damaged_state_file_resumes_instead_of_restarting_at_zero(finished, tmp_path, damage):
    """SRE trial B5: rc 0, retrained from step 0, overwriting model.ckpt-0/10/20/30."""
    run = _copy(finished, tmp_path)
    if damage == "garbage":
        (run / "checkpoint").write_text("this is {not a proto")
    else:
        (run / "checkpoint").unlink()
    again = restart_cases.run_to_end(ARGS + ["--train_steps=40"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step 30" in again.stderr and "resuming from the newest checkpoint found, model.ckpt-30" \
        in again.stderr
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["name"], p["first_step"], p["last_step"]) for p in phases] == [("train", 0, 40)]


@pytest.mark.parametrize("content", ["", '{"flags": {"data": "dig', "garbage", "[1, 2]"])
def test_a_damaged_run_info_keeps_the_phase_and_its_schedule(finished, tmp_path, content):
    """SRE trial B6 (JSONDecodeError/AttributeError on every restart) and W4 (a deleted run_info.json reset the
    optimizer and restarted the schedule, as 'another recipe')."""
    run = _copy(finished, tmp_path)
    if content:
        (run / "run_info.json").write_text(content)
    else:
        (run / "run_info.json").unlink()
    (run / "early_stopping.json").write_text("[3]")
    again = restart_cases.run_to_end(ARGS + ["--train_steps=50", "--early_stopping_patience=9"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr and "another recipe" not in again.stderr
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["name"], p["first_step"], p["last_step"], p["lr_schedule"]) for p in phases] == [
        ("train", 0, 50, "cosine")]
    rate = restart_cases._scalars(run, "learning_rate")[31]  # The schedule goes on from step 30, not from 1e-3.
    assert rate == pytest.approx(PhaseSchedule(1e-3, 0, 50, "cosine").value(30), rel=1e-4)


@pytest.mark.parametrize("damage", ["garbage", "missing_export", "non_numeric", "no_metric"])
def test_a_damaged_best_record_is_rebuilt_so_a_worse_evaluation_is_not_served(finished, tmp_path, damage):
    """SRE trial W3: a damaged export/best/best.json made the next evaluation, however bad, the "best" export.
    The resume trains at a rate of 1e-12 (a new phase): its evaluation at step 40 equals step 30's, so it beats
    nothing and must not be exported; the record comes back from the evaluation events."""
    run = _copy(finished, tmp_path)
    best_dir = run / "export" / "best"
    before = sorted(p.name for p in best_dir.iterdir() if p.name.isdigit())
    record = json.loads((best_dir / "best.json").read_text())
    if damage == "garbage":
        (best_dir / "best.json").write_text('{"metrics": {"accur')
    elif damage == "non_numeric":  # SRE trial 2026-12-04 B1: a TypeError on every rerun.
        (best_dir / "best.json").write_text(json.dumps(dict(record, metrics=dict(record["metrics"], accuracy="high"))))
    elif damage == "no_metric":
        (best_dir / "best.json").write_text(json.dumps(dict(record, metrics={"global_step": 30})))
    else:
        (best_dir / "best.json").write_text(json.dumps(dict(record, export="1234")))
    accuracy = dict(restart_cases._scalars(run / "eval", "accuracy"))
    best_step = max(sorted(accuracy), key=lambda s: (accuracy[s], -s))  # The first of the best.
    again = restart_cases.run_to_end(ARGS + ["--train_steps=40", "--learning_rate=1e-12"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert "best.json is " in again.stderr and "rebuilt from the evaluation events" in again.stderr
    assert sorted(p.name for p in best_dir.iterdir() if p.name.isdigit()) == before, "step 40 was exported"
    rebuilt = json.loads((best_dir / "best.json").read_text())
    assert rebuilt["export"] == before[-1] and rebuilt["metrics"]["global_step"] == best_step
    assert rebuilt["metrics"]["accuracy"] == pytest.approx(accuracy[best_step])
    served = json.loads((run / "eval_metrics.json").read_text())
    assert served["global_step"] == best_step and served["last_evaluation"]["global_step"] == 40
