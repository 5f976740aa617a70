"""The catalogue of bad inputs: each ends in one `error:` line and exit 1, or is skipped and counted.

Runs the real entry point (absl flag parsing, `task.main`) in-process, so the whole
catalogue stays fast; tests/test_cli.py covers the same contract through subprocesses.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from conftest import make_image_folder
from trainer import task
from trainer.stages import experiment
from trainer.config import Config


def cli(capsys, *args, whole_stderr=False):
    """Runs the trainer's entry point; returns (exit status, the error lines on stderr [, all of stderr])."""
    flags.FLAGS.unparse_flags()
    try:
        argv = task._parse_flags(["trainer", *args])
        task.main(argv)
        status = 0
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return (status, errors, err) if whole_stderr else (status, errors)


def assert_error(capsys, fragment, *args):
    status, errors = cli(capsys, *args)
    assert status == 1 and len(errors) == 1, errors
    assert fragment in errors[0], errors[0]


@pytest.fixture
def npz(tmp_path):
    def make(name="d.npz", n=20, labels=None, **override):
        arrays = dict(x_train=np.zeros((n, 6, 6)), y_train=np.arange(n) % 3 if labels is None else labels,
                      x_test=np.zeros((5, 6, 6)), y_test=np.arange(5) % 3)
        arrays.update(override)
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return str(path)
    return make


def test_data_problems(capsys, tmp_path, npz):
    run = f"--model_dir={tmp_path / 'run'}"
    assert_error(capsys, "--data=/no/such/place does not exist", "--data=/no/such/place", run)
    (tmp_path / "notes.txt").write_text("hello")
    assert_error(capsys, "is neither 'digits', a .npz file", f"--data={tmp_path / 'notes.txt'}", run)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    assert_error(capsys, "is not a readable .npz file", f"--data={tmp_path / 'garbage.npz'}", run)
    (tmp_path / "empty").mkdir()
    assert_error(capsys, "has no class sub-folders", f"--data={tmp_path / 'empty'}", run)
    (tmp_path / "one" / "cats").mkdir(parents=True)
    assert_error(capsys, "class folder 'cats' has no images", f"--data={tmp_path / 'one'}", run)
    assert_error(capsys, "lacks the arrays x_test", f"--data={npz('nokeys.npz', x_test=None)}", run)
    assert_error(capsys, "different lengths", f"--data={npz('len.npz', y_train=np.zeros(3))}", run)
    assert_error(capsys, "negative label", f"--data={npz('neg.npz', labels=np.arange(20) % 3 - 1)}", run)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert_error(capsys, "has label 2, outside 0..1", f"--data={npz()}", f"--labels_file={labels}",
                 "--backbone=mlp", run)
    assert_error(capsys, "--classes names 12, absent", "--data=digits", "--classes=1,12", run)


def test_all_images_unreadable(capsys, tmp_path):
    root = tmp_path / "bad"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.jpg").write_text("no")
    (root / "b" / "y.png").write_bytes(b"")
    assert_error(capsys, "no readable image among 2 files", f"--data={root}", f"--model_dir={tmp_path / 'r'}")


def test_truncated_jpeg_is_skipped_and_counted(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=20)
    good = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    raw = good.read_bytes()
    (root / "cats" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    from trainer.data import sources as data
    dataset = data.load(Config(data=str(root)))
    assert [p.split("/")[-1] for p in dataset.skipped_files] == ["truncated.jpg"]


@pytest.mark.parametrize("args, fragment", [
    (["--batch_size=0"], "--batch_size=0 must be a positive integer"),
    (["--batch_size=-4"], "--batch_size=-4 must be a positive integer"),
    (["--batch_size=5000"], "--batch_size=5000 is larger than the"),
    (["--train_steps=0"], "--train_steps=0 must be a positive integer"),
    (["--backbone=alexnet"], "--backbone=alexnet is unknown; choose one of"),
    (["--backbone=mlp", "--cut_layer=fc7"], "--cut_layer=fc7 is not a layer"),
    (["--optimizer=adagrad"], "--optimizer=adagrad is not valid; choose one of: adam, sgd, rmsprop"),
    (["--strategy=horovod"], "--strategy=horovod is unknown"),
    (["--backbone=small_cnn", "--freeze=99"], "--freeze=99 is out of range: the trunk has 9 layers"),
    (["--backbone=small_cnn", "--freeze=-99"], "--freeze=-99 is out of range"),
    (["--model_fn=no_such_module:build"], "could not be imported"),
    (["--model_fn=os:getcwd"], "must return a functional tf.keras.Model"),
    (["--flagfile=/no/such/flags"], "/no/such/flags"),
    (["--num_classes=3"], "--num_classes=3 differs from the 10 classes"),
])
def test_flag_problems(capsys, tmp_path, args, fragment):
    assert_error(capsys, fragment, "--data=digits", "--backbone=mlp", f"--model_dir={tmp_path / 'run'}", *args)


def test_tf_config_problems(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert_error(capsys, "TF_CONFIG is not valid JSON", "--data=digits", f"--model_dir={tmp_path}")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["h:1"]}, "task": {"type": "boss"}}))
    assert_error(capsys, "unknown task type 'boss'", "--data=digits", f"--model_dir={tmp_path}")


def test_model_dir_of_a_different_model(capsys, tmp_path):
    run = tmp_path / "run"
    experiment.train_and_evaluate(Config(data="digits", backbone="mlp", model_dir=str(run), train_steps=1))
    assert_error(capsys, "--backbone=small_cnn differs from the --backbone=mlp of the run", "--data=digits",
                 "--backbone=small_cnn", f"--model_dir={run}")
    assert_error(capsys, "holds a checkpoint of a different model", "--data=digits", "--backbone=mlp",
                 "--head_units=16", f"--model_dir={run}")


def test_base_model_problems(capsys, tmp_path):
    run = f"--model_dir={tmp_path / 'run'}"
    (tmp_path / "fake.h5").write_text("not hdf5")
    assert_error(capsys, "is not a loadable Keras model", "--data=digits", f"--base_model={tmp_path / 'fake.h5'}", run)
    inputs = tf.keras.Input((8, 8, 3), name="image")
    x = tf.keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = tf.keras.layers.Flatten()(x)
    out = tf.keras.layers.Dense(10, activation="softmax")(x)
    tf.keras.Model(inputs, out).save(tmp_path / "lambda.h5")
    assert_error(capsys, "contains Lambda layers, which run Python code", "--data=digits",
                 f"--base_model={tmp_path / 'lambda.h5'}", run)
    status, errors = cli(capsys, "--data=digits", f"--base_model={tmp_path / 'lambda.h5'}", "--allow_custom_objects",
                         "--dry_run", run)
    assert status == 0 and not errors


def test_secrets_never_reach_logs_or_run_info(tmp_path, monkeypatch):
    import subprocess
    import sys
    from conftest import REPO

    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY SECRET456"}))
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key), "ACCESS_TOKEN": "tok-SECRET123",
           "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "hp.metrics")}
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=mlp",
                           "--train_steps=5", f"--model_dir={tmp_path / 'run'}", "--data_typo=1"],
                          cwd=REPO, env={**__import__("os").environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 1  # An unknown flag: the error must not echo the environment either.
    proc2 = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=mlp",
                            "--train_steps=5", f"--model_dir={tmp_path / 'run'}"],
                           cwd=REPO, env={**__import__("os").environ, **env}, capture_output=True, text=True)
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    everything = proc.stdout + proc.stderr + proc2.stdout + proc2.stderr + (tmp_path / "run" / "run_info.json").read_text()
    assert "SECRET456" not in everything and "SECRET123" not in everything
