"""Resuming with changed flags (issue 20): every flag that shapes training starts a recorded new phase with a
console line, every flag that defines the model is refused with one error line; the history is never
rewritten. And the recipe mistakes that used to be caught late, or not at all."""
import json

import pytest

import restart_cases

from test_bad_inputs import assert_error, cli
from test_recipe import scalars

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.

BASE = ["--data=digits", "--classes=0,1,2", "--backbone=mlp", "--save_checkpoints_steps=20"]


def _phases(run):
    return json.loads((run / "run_info.json").read_text())["phases"]


@pytest.mark.parametrize("change, shown", [
    ("--lr_schedule=cosine", "--lr_schedule=cosine (was constant)"),
    ("--warmup_steps=5", "--warmup_steps=5 (was 0)"),
    ("--label_smoothing=0.2", "--label_smoothing=0.2 (was 0.0)"),
    ("--class_weight=balanced", "--class_weight="),
    ("--weight_decay=0.01", "--weight_decay=0.01 (was 0.0)"),
    ("--clip_norm=1.0", "--clip_norm=1.0 (was 0.0)"),
    ("--batch_size=16", "--batch_size=16 (was 32)"),
    ("--augment=flip,rotate:0.2", "--augment=flip,rotate:0.2 (was none)"),  # Wrappers trial U2: `flip,0.0`.
    ("--dropout=0.3", "--dropout=0.3 (was 0.0)"),
])
def test_a_changed_training_flag_starts_a_recorded_phase(capsys, tmp_path, change, shown):
    """Trial c150: these were taken silently and the phase history rewritten as if they had always held."""
    run = tmp_path / "run"
    common = BASE + [f"--model_dir={run}"]
    assert cli(capsys, *common, "--train_steps=20") == (0, [])
    first = _phases(run)
    status, errors, err = cli(capsys, *common, "--train_steps=40", change, whole_stderr=True)
    assert (status, errors) == (0, []), err[-2000:]
    assert "resuming at step 20 with another recipe" in err and shown in err
    phases = _phases(run)
    assert phases[0] == first[0]  # The history is kept as it was.
    assert [(p["name"], p["first_step"], p["last_step"]) for p in phases] == [
        ("train", 0, 20), ("train (flags changed at step 20)", 20, 40)]


def test_the_new_phase_has_its_own_schedule(capsys, tmp_path):
    run = tmp_path / "run"
    common = BASE + [f"--model_dir={run}"]
    assert cli(capsys, *common, "--train_steps=20") == (0, [])
    assert cli(capsys, *common, "--train_steps=40", "--lr_schedule=cosine", "--warmup_steps=10")[0] == 0
    rates = scalars(run, "learning_rate")
    assert rates[1] == pytest.approx(1e-3)
    assert rates[21] == pytest.approx(1e-4)  # Step 20 is the new phase's first: warmup 1/10 of the rate.


@pytest.mark.parametrize("change, fragment", [
    ("--image_size=16", "the model's input is 16x16x3 here but 8x8x3"),
    ("--label_mode=categorical", "--label_mode=categorical differs from the --label_mode=sparse"),
    ("--head_pooling=max", "--head_pooling=max differs"),
])
def test_a_changed_model_flag_is_refused(capsys, tmp_path, change, fragment):
    """Trial c045/c050: another --image_size or --label_mode was taken, and one step got two accuracies."""
    run = tmp_path / "run"
    assert cli(capsys, *BASE, f"--model_dir={run}", "--train_steps=20") == (0, [])
    before = (run / "run_info.json").read_text()
    assert_error(capsys, fragment, *BASE, f"--model_dir={run}", "--train_steps=40", change)
    assert (run / "run_info.json").read_text() == before


def test_a_smaller_plan_than_the_checkpoint_says_so(tmp_path):
    """Trial c217: silently 'done'."""
    run = tmp_path / "run"
    assert restart_cases.run_to_end(BASE + ["--train_steps=40"], run).returncode == 0
    again = restart_cases.run_to_end(BASE + ["--train_steps=20"], run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to train: the checkpoint" in again.stderr and "is at step 40 and the flags plan 20 steps" in again.stderr


def test_a_finished_run_rerun_with_changed_training_flags_says_they_change_nothing_and_keeps_its_record(tmp_path):
    """Newcomer pass 2026-12-05: a finished run rerun with another --ema_decay said only `nothing to train`, and
    run_info.json's flags (so report.html's "flags that differ from the defaults") took the new value."""
    run = tmp_path / "run"
    common = BASE + ["--train_steps=20", "--ema_decay=0.99"]
    assert restart_cases.run_to_end(common, run).returncode == 0
    before = json.loads((run / "run_info.json").read_text())
    again = restart_cases.run_to_end(common + ["--ema_decay=0.9", "--augment=flip"], run)
    err = again.stderr
    assert again.returncode == 0, err[-2000:]
    assert ("--augment=flip (was none), --ema_decay=0.9 (was 0.99): no effect, every step is trained; the run's "
            "record keeps what it trained with") in err, err[-2000:]
    after = json.loads((run / "run_info.json").read_text())
    assert after["flags"]["ema_decay"] == 0.99 and after["flags"]["augment"] == before["flags"]["augment"]
    assert after["phases"] == before["phases"]
    assert "<td>--ema_decay</td><td>0.99</td>" in (run / "report.html").read_text()


@pytest.mark.parametrize("flags, fragment", [
    (["--epochs=nan"], "--epochs=nan is not a finite number"),
    (["--weight_decay=nan"], "--weight_decay=nan is not a finite number"),
    (["--learning_rate=nan"], "--learning_rate=nan is not a finite number"),
    (["--clip_norm=inf"], "--clip_norm=inf is not a finite number"),
    (["--lr_schedule=cosine", "--learning_rate=0.01", "--min_learning_rate=0.005", "--fine_tune_steps=10"],
     "--min_learning_rate=0.005 must be below --fine_tune_learning_rate=0.001 (--learning_rate / 10)"),
    (["--freeze=all", "--fine_tune_steps=10", "--fine_tune_freeze=999", "--backbone=small_cnn"],
     "--fine_tune_freeze=999 is out of range"),
    (["--freeze=all", "--fine_tune_steps=10", "--fine_tune_freeze=999", "--backbone=small_cnn", "--dry_run"],
     "--fine_tune_freeze=999 is out of range"),
    (["--model_fn=tiny_models:rgb"], "takes inputs of shape (8, 8, 3), but --data=digits holds (8, 8, 1)"),
    (["--model_fn=multi_io_model:build", "--freeze=all"], "--freeze=all freezes layers of a built-in model's trunk"),
    (["--model_fn=multi_io_model:build", "--fine_tune_freeze=2", "--fine_tune_steps=5"], "--fine_tune_freeze=2"),
])
def test_recipe_mistakes_are_one_line_before_training(capsys, tmp_path, flags, fragment):
    """Trial c004/c005/c128/c129 (NaN), c123 (phase 2's cosine rose to the minimum), c010/c015/c148 (caught after
    phase 1, under the wrong flag name, never by --dry_run), c184/c185 (--freeze ignored with --model_fn)."""
    run = tmp_path / "run"
    steps = [] if any(f.startswith("--epochs") for f in flags) else ["--train_steps=10"]
    assert_error(capsys, fragment, "--data=digits", *steps, f"--model_dir={run}", *flags)
    assert not run.exists() or {p.name for p in run.iterdir()} <= {".trainer.lock", "train.log"}  # Trial c024.


def test_a_class_weight_file_of_zeros_is_refused(capsys, tmp_path):
    """Trial c025: exit 0 with loss 0.0 and no weight trained."""
    weights = tmp_path / "zeros.json"
    weights.write_text(json.dumps({"0": 0, "1": 0, "2": 0}))
    assert_error(capsys, "gives every class weight 0", *BASE, "--train_steps=10", f"--class_weight={weights}",
                 f"--model_dir={tmp_path / 'run'}")
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {".trainer.lock", "train.log"}


def test_dry_run_resolves_epochs_and_both_phases(capsys, tmp_path):
    """Trial c002/c008/c168: the header said (1000 steps) for 23, --dry_run recorded train_steps null."""
    run = tmp_path / "run"
    assert cli(capsys, "--data=digits", "--backbone=mlp", "--epochs=0.5", "--fine_tune_steps=7", "--dry_run",
               f"--model_dir={run}") == (0, [])
    info = json.loads((run / "run_info.json").read_text())
    assert info["train_steps"] == 30 and [(p["name"], p["first_step"], p["last_step"]) for p in info["plan"]] == [
        ("train", 0, 23), ("fine_tune", 23, 30)]  # ceil(0.5 x 1412 / 32) = 23.


def test_eval_metrics_describe_the_served_model_and_keep_the_last_evaluation_apart(capsys, tmp_path):
    """Trial c075/c017/c074: top-level figures of the last evaluation beside per-class figures of the best export,
    and raw dicts in report.html's table."""
    run = tmp_path / "run"
    common = BASE + ["--eval_throttle_secs=0", f"--model_dir={run}"]
    assert cli(capsys, *common, "--train_steps=40")[0] == 0
    # A negligible rate: step 60 evaluates no better than step 40, so the best export (the served model) stays 40.
    assert cli(capsys, *common, "--train_steps=60", "--learning_rate=1e-9")[0] == 0
    metrics = json.loads((run / "eval_metrics.json").read_text())
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    assert metrics["served_model"] == "best" and metrics["global_step"] == best["metrics"]["global_step"] == 40
    assert metrics["accuracy"] == best["metrics"]["accuracy"]
    assert metrics["last_evaluation"]["global_step"] == 60
    matrix = metrics["confusion_matrix"]["matrix"]  # The served model's: its accuracy is the top-level one.
    assert sum(matrix[i][i] for i in range(len(matrix))) / sum(map(sum, matrix)) == pytest.approx(metrics["accuracy"])
    html = (run / "report.html").read_text()
    assert "The served model (export/best), evaluated at step 40" in html and "The last evaluation, step 60" in html
    assert "{&#x27;" not in html and "{'" not in html  # No raw dicts in table cells.


def test_a_refused_resume_is_its_one_error_line(tmp_path):
    """Wrappers trial U3: resuming with --mixed_precision added printed the CPU warning, then the error."""
    run = tmp_path / "run"
    assert restart_cases.run_to_end(BASE + ["--train_steps=20"], run).returncode == 0
    again = restart_cases.run_to_end(BASE + ["--train_steps=40", "--mixed_precision"], run)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 1 and len(lines) == 1, again.stderr
    assert lines[0].startswith("error: --mixed_precision=True differs from the --mixed_precision=False"), lines
