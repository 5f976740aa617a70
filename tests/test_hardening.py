"""The defects a newcomer found (issue 11): each runs the real entry point on real files.

Every case ends in exit 0 with a correct model, or in exit 1 with exactly one `error:` line and
no traceback. `cli` (tests/test_bad_inputs.py) runs `task.main` in-process; signals and the
resume hint need real subprocesses.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, last_json, make_image_folder, run_cli
from test_bad_inputs import assert_error, cli

MLP = ["--backbone=mlp", "--train_steps=2"]


def test_model_dir_that_cannot_be_a_folder(capsys, tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert_error(capsys, "is an existing file, not a folder", "--data=digits", *MLP,
                 f"--model_dir={tmp_path / 'a_file'}")
    assert_error(capsys, "is not a writable folder", "--data=digits", *MLP, f"--model_dir={tmp_path / 'a_file' / 'x'}")
    assert_error(capsys, "--model_dir=/proc/x is not a writable folder", "--data=digits", *MLP, "--model_dir=/proc/x")


@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_seed_out_of_range(capsys, tmp_path, seed):
    assert_error(capsys, f"--seed={seed} must be between 0 and 4294967295", "--data=digits", *MLP,
                 f"--seed={seed}", f"--model_dir={tmp_path}")


@pytest.mark.parametrize("mode, loss", [
    ("categorical", "sparse_categorical_crossentropy"),
    ("sparse", "mse"),
    ("binary", "categorical_crossentropy"),  # Trained to loss 0.0 and learnt nothing, exit 0.
    ("binary", "sparse_categorical_crossentropy"),
])
def test_loss_that_does_not_fit_the_label_mode(capsys, tmp_path, mode, loss):
    assert_error(capsys, f"--loss={loss} does not fit --label_mode={mode}", "--data=digits", "--classes=0,1",
                 *MLP, f"--label_mode={mode}", f"--loss={loss}", f"--model_dir={tmp_path}")


def test_single_class(capsys, tmp_path):
    assert_error(capsys, "has a single class (3)", "--data=digits", "--classes=3", *MLP, f"--model_dir={tmp_path / 'r'}")
    root = make_image_folder(tmp_path / "one", classes=("cats",), per_class=6)
    assert_error(capsys, "has a single class (cats)", f"--data={root}", *MLP, f"--model_dir={tmp_path / 'r2'}")


def test_resume_with_classes_in_another_order_is_refused_before_any_write(capsys, tmp_path):
    run = tmp_path / "run"
    status, _ = cli(capsys, "--data=digits", "--classes=0,1,2", *MLP, f"--model_dir={run}")
    assert status == 0
    summary_before = (run / "model_summary.json").read_bytes()
    info_before = (run / "run_info.json").read_bytes()
    assert_error(capsys, "trained on the classes 0,1,2; this one has 2,1,0", "--data=digits", "--classes=2,1,0",
                 *MLP, f"--model_dir={run}")
    assert_error(capsys, "holds a run with 3 classes, this one has 10", "--data=digits", *MLP, f"--model_dir={run}")
    assert (run / "model_summary.json").read_bytes() == summary_before  # Defect 8: not overwritten.
    assert (run / "run_info.json").read_bytes() == info_before


def test_dry_run_does_not_block_a_real_run(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli(capsys, "--dry_run", "--num_classes=4", "--backbone=mlp", f"--model_dir={run}")[0] == 0
    status, errors = cli(capsys, "--data=digits", *MLP, f"--model_dir={run}")
    assert status == 0 and not errors
    assert json.loads((run / "run_info.json").read_text())["dry_run"] is False


def test_folder_names_that_look_like_globs_or_files(capsys, tmp_path):
    for i, name in enumerate(("run[1]*?", "images.npz", "x.tfrecord")):
        root = make_image_folder(tmp_path / name, per_class=6)
        status, errors = cli(capsys, f"--data={root}", *MLP, "--image_size=8", "--batch_size=4",
                             f"--model_dir={tmp_path / f'm{i}'}")
        assert status == 0 and not errors, (name, errors)


def test_symlink_loop_is_followed_once(tmp_path):
    from trainer.data import sources as data
    from trainer.config import Config

    root = make_image_folder(tmp_path / "images", per_class=6)
    os.symlink("..", root / "cats" / "loop")
    os.symlink(str(root / "dogs"), root / "cats" / "dogs_again")  # A second way to the dogs' folder.
    dataset = data.load(Config(data=str(root)))
    counts = dataset.counts()
    total = {c: counts["train"].get(c, 0) + counts["validation"].get(c, 0) for c in ("cats", "dogs")}
    assert total == {"cats": 6, "dogs": 6}


def test_hidden_entries_skipped_and_unsupported_files_reported(capsys, tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=8)
    for hidden in (".ipynb_checkpoints", ".git", "__MACOSX"):
        make_image_folder(root / hidden, classes=("x",), per_class=2)
    for i in range(8):  # macOS resource forks: not images, and not bad images either.
        (root / "cats" / f"._cats_{i}.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "dogs" / "photo.webp").write_bytes(b"RIFF....WEBP")
    (root / "dogs" / "scan.tiff").write_bytes(b"II*\x00")
    (root / "dogs" / "notes.txt").write_text("hi")
    run = tmp_path / "run"
    status, errors = cli(capsys, f"--data={root}", *MLP, "--image_size=8", "--batch_size=4", "--max_bad_fraction=0",
                         f"--model_dir={run}")
    assert status == 0 and not errors
    info = json.loads((run / "run_info.json").read_text())
    assert info["class_names"] == ["cats", "dogs"] and info["skipped_files"] == []
    assert info["ignored_files"] == {".tiff": 1, ".txt": 1, ".webp": 1}


@pytest.fixture
def npz(tmp_path):
    def make(**override):
        rng = np.random.default_rng(0)
        arrays = dict(x_train=rng.random((30, 6, 6)).astype(np.float32), y_train=np.arange(30) % 3,
                      x_test=rng.random((9, 6, 6)).astype(np.float32), y_test=np.arange(9) % 3)
        arrays.update(override)
        path = tmp_path / f"d{len(list(tmp_path.glob('*.npz')))}.npz"
        np.savez(path, **arrays)
        return f"--data={path}"
    return make


def test_npz_shapes_types_and_values(capsys, tmp_path, npz):
    run = f"--model_dir={tmp_path / 'run'}"
    nan = np.random.default_rng(0).random((30, 6, 6)).astype(np.float32)
    nan[4, 2, 2] = np.nan
    cases = [
        (dict(x_train=nan), "x_train holds NaN or infinite values in 1 example(s), the first at index 4"),
        (dict(x_test=np.zeros((0, 6, 6)), y_test=np.zeros(0, int)), "x_test has 0 examples"),
        (dict(x_train=np.zeros(30)), "x_train has shape (30,); expected images as N,H,W or N,H,W,C"),
        (dict(x_train=np.zeros((30, 64))), "x_train has shape (30, 64)"),
        (dict(x_train=np.array([["a"] * 4] * 30)), "x_train has dtype <U1; expected numbers"),
        (dict(x_train=np.zeros((30, 6, 6, 2))), "with C = 1, 3 or 4 channels"),
        (dict(x_test=np.zeros((9, 6, 6, 5))), "x_test has shape (9, 6, 6, 5)"),
        (dict(y_train=np.array(["cat", "dog", "eel"] * 10)), "y_train holds <U3 values ('cat', 'dog', 'eel', ...)"),
        (dict(y_test=np.array([0, 1, np.nan] * 3)), "y_test holds NaN or infinite labels"),
        (dict(x_train=np.float32(3)), "is a single value"),
    ]
    for override, fragment in cases:
        assert_error(capsys, fragment, npz(**override), "--backbone=mlp", run)
    status, errors = cli(capsys, npz(), *MLP, "--batch_size=8", run)  # Without the defect, the file trains.
    assert status == 0 and not errors, errors


def test_non_finite_weights_are_never_exported(tmp_path):
    from trainer.outputs import export

    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, name="d")])
    good = export.save_weights_checkpoint(model, str(tmp_path / "good" / "ckpt"))
    kernel = model.get_layer("d").kernel
    kernel.assign(tf.fill(kernel.shape, np.float32(np.inf)))
    bad = export.save_weights_checkpoint(model, str(tmp_path / "bad" / "ckpt"))
    assert export.checkpoint_is_finite(good) and not export.checkpoint_is_finite(bad)

    # The export policy both engines run after each evaluation: a checkpoint with non-finite weights is not exported.
    from trainer.config import Config
    from trainer.policy.after_evaluation import AfterEvaluation

    calls = []

    def export_fn(root, keep):
        calls.append((root, keep))
        return "exported"

    policy = AfterEvaluation(Config(model_dir=str(tmp_path), checkpoint_dir=str(tmp_path), export="latest"))
    result = {"global_step": 1, "accuracy": 0.5, "loss": 1.0}
    assert policy.export(result, False, export_fn, lambda: export.checkpoint_is_finite(bad)) is None and not calls
    assert policy.export(result, False, export_fn, lambda: export.checkpoint_is_finite(good)) == "exported"


def test_small_cli_slips(capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        status, errors = cli(capsys, "--data=digits", "--classes=0,1,", *MLP, "--model_dir=~/run")
    finally:
        os.environ["HOME"] = old_home or ""
    assert status == 0 and not errors  # Trailing comma ignored; ~ expanded.
    assert json.loads((home / "run" / "run_info.json").read_text())["class_names"] == ["0", "1"]
    assert_error(capsys, "'flip:0.9': flip takes no amount", "--data=digits", "--augment=flip:0.9", *MLP,
                 f"--model_dir={tmp_path / 'a'}")
    for spec, line in (("rotate:", "'rotate:' needs a number after the colon (or write rotate alone for 0.1)"),
                       ("rotate:0.1,rotate:0.3", "'rotate' is given twice"), ("flip,flip", "'flip' is given twice")):
        assert_error(capsys, line, "--data=digits", f"--augment={spec}", *MLP, f"--model_dir={tmp_path / 'u1'}")
    assert_error(capsys, "--hypertune_metric=bogus is not a metric this run reports; choose one of: accuracy, loss, macro_f1, top_k_accuracy (more classes than --top_k), auc (--label_mode=binary only)",
                 "--data=digits", "--hypertune_metric=bogus", *MLP, f"--model_dir={tmp_path / 'b'}")
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())  # Refused before training.


def test_help_says_what_the_program_does():
    for flag in ("--help", "-h"):
        proc = subprocess.run([sys.executable, "-m", "trainer.task", flag], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.lstrip().startswith("trainer: train a Keras transfer-learning image classifier")
        assert "--data" in proc.stdout and "only module that reads" not in proc.stdout


def test_convert_slips(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=3)

    def convert(*args):
        return subprocess.run([sys.executable, "-m", "trainer.convert", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    proc = convert("--data", str(root))  # No --output: argparse's usage error, now an error line.
    assert proc.returncode == 1 and proc.stderr.startswith("error: the following arguments are required: --output")
    (tmp_path / "file").write_text("x")
    proc = convert(f"--data={root}", f"--output={tmp_path / 'file'}")
    assert proc.returncode == 1 and "error: --output=" in proc.stderr and "Traceback" not in proc.stderr
    out = tmp_path / "tfr"
    proc = convert(f"--data={root}", f"--output={out}", "--validation_split=0", "--shards=50")
    assert proc.returncode == 0, proc.stderr
    report = last_json(proc.stdout)
    assert report["examples"] == {"train": 6}
    assert sorted(p.name for p in out.glob("*.tfrecord")) == [f"train-0000{i}-of-00006.tfrecord" for i in range(6)]


def test_submit_dry_run_checks_the_trainer_flags(tmp_path):
    def submit(*trainer_args):
        return subprocess.run([sys.executable, "scripts/submit_vertex.py", "--project=p", "--region=us-central1",
                               "--bucket=gs://b", "--dry_run", "--", *trainer_args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)

    for args, fragment in ((["--backbone=mlp"], "--data is required"),
                           (["--data=gs://b/d", "--no_such_flag=1"], "no_such_flag"),
                           (["--data=gs://b/d", "--train_steps=abc"], "train_steps"),
                           (["--data=gs://b/d", "--label_mode=binary", "--loss=mse", "--seed=-3"], "--seed=-3")):
        proc = submit(*args)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1 and fragment in errors[0], proc.stderr
    assert submit("--data=gs://b/d", "--train_steps=10").returncode == 0


def _start(cwd, *args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "trainer.task", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_training(proc):
    for line in proc.stderr:
        if "loss = " in line:  # Estimator's first-step log line: the training session runs.
            return
    raise AssertionError("training never started")


@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "preempted"), (signal.SIGINT, 130, "interrupted")])
def test_signal_without_model_dir_names_the_folder_to_resume(tmp_path, sig, status, word):
    args = ["--data=digits", "--backbone=mlp", "--train_steps=100000", "--save_checkpoints_steps=100000"]
    proc = _start(tmp_path, *args, "--verbose")  # The full log on the console: we wait for its first step.
    _wait_training(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    (line,) = [x for x in err.splitlines() if x.startswith(word)]
    model_dir = line.split("--model_dir=")[1]
    assert (tmp_path / model_dir).is_dir() and tf.train.latest_checkpoint(str(tmp_path / model_dir))
    step = int(tf.train.latest_checkpoint(str(tmp_path / model_dir)).rsplit("-", 1)[1])
    proc = _start(tmp_path, *args[:-2], f"--train_steps={step + 2}", f"--model_dir={model_dir}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and last_json(out)["global_step"] == step + 2, err[-2000:]


def test_mixed_precision_trains_exports_and_serves(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("--data=digits", "--backbone=small_cnn", "--train_steps=60", "--mixed_precision",
                   f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["accuracy"] > 0.5
    loaded = tf.saved_model.load(summary["export"])
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32) * 255
    probabilities = loaded.signatures["serving_default"](image=tf.constant(images))["probabilities"].numpy()
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(-1), 1, atol=1e-3)
    model = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.slow  # A restart (16 s): make test's 20 minutes.
def test_best_export_survives_a_restart_with_a_worse_evaluation(tmp_path):
    """Estimator's BestExporter exported the first evaluation after a restart, however bad (tensorflow#47396)."""
    train = make_image_folder(tmp_path / "train", per_class=16)
    easy = make_image_folder(tmp_path / "easy", per_class=6, seed=1)
    swapped = make_image_folder(tmp_path / "swapped", classes=("dogs", "cats"), per_class=6, seed=1)
    run = tmp_path / "run"
    common = [f"--data={train}", "--backbone=mlp", "--image_size=8", "--save_checkpoints_steps=30",
              "--eval_throttle_secs=0", f"--model_dir={run}"]
    first = run_cli(*common, "--train_steps=60", f"--eval_data={easy}")
    assert first.returncode == 0, first.stderr[-3000:]
    best = last_json(first.stdout)
    assert best["accuracy"] > 0.9
    record = json.loads((run / "export" / "best" / "best.json").read_text())
    # A restart (as after a preemption) whose evaluation is far worse: labels swapped in its eval data.
    second = run_cli(*common, "--train_steps=90", f"--eval_data={swapped}")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = last_json(second.stdout)
    assert resumed["global_step"] == 90 and resumed["accuracy"] < 0.5
    assert resumed["export"] == best["export"]  # Still the best model, named in the summary...
    assert json.loads((run / "export" / "best" / "best.json").read_text()) == record
    versions = [p for p in (run / "export" / "best").iterdir() if p.is_dir()]
    assert [str(p) for p in versions] == [best["export"]]  # ...and nothing worse was exported.
    info = json.loads((run / "run_info.json").read_text())
    assert info["export"] == best["export"]


def test_flags_seldom_used_run_end_to_end(capsys, tmp_path):
    """--eval_steps, --jit, --checkpoint_dir, --tensorboard_dir, --num_gpus, --promote_metric/--promote_min_delta."""
    checkpoints, board, champions = tmp_path / "ckpt", tmp_path / "board", tmp_path / "champions"
    common = ["--data=digits", "--backbone=mlp", "--train_steps=30", "--eval_steps=2", "--jit",
              f"--checkpoint_dir={checkpoints}", f"--tensorboard_dir={board}", "--strategy=one_device",
              "--num_gpus=0", f"--champion_dir={champions}", "--promote_metric=macro_f1"]
    status, errors = cli(capsys, *common, f"--model_dir={tmp_path / 'a'}")
    assert status == 0 and not errors
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("model.ckpt-30")  # Not in --model_dir.
    assert list(board.rglob("events.out.tfevents.*"))
    info = json.loads((tmp_path / "a" / "run_info.json").read_text())
    assert info["promotion"]["promoted"] and info["promotion"]["metric"] == "macro_f1"
    assert 0 < info["promotion"]["challenger"] <= 1
    # A second run that must beat the champion's macro F1 by 2.0 (impossible) is not promoted.
    status, errors = cli(capsys, *common[:4], f"--checkpoint_dir={tmp_path / 'ckpt2'}", f"--champion_dir={champions}",
                         "--promote_metric=macro_f1", "--promote_min_delta=2.0", f"--model_dir={tmp_path / 'b'}")
    assert status == 0 and not errors
    assert not json.loads((tmp_path / "b" / "run_info.json").read_text())["promotion"]["promoted"]
