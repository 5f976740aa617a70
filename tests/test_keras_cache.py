"""--cache_features on the Keras engine (issue 37; it was refused there): the Estimator engine's contract (README
"--cache_features"), on both runtimes. The head trains on the frozen trunk's outputs, computed once; evaluations are
the full model's on the images; every export and keras_model.h5 are the full model; a SIGKILLed run resumes from its
head-only checkpoint and ends as the uninterrupted one; the refusals are one `error:` line each."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO  # noqa: F401 - puts the repository on the path.
from trainer.data import sources as data
from trainer.outputs import calibration
from test_calibration_runs import served_temperature
from trainer.config import Config

# Runs on TensorFlow 2.21 (the Keras engine's runtime); on TF 2.15 with `make test-slow` only.
pytestmark = [pytest.mark.tf221, pytest.mark.keras_engine]

ARGS = ["--engine=keras", "--data=digits", "--classes=3,5,8", "--cache_features", "--batch_size=32",
        "--learning_rate=0.01", "--eval_throttle_secs=0", "--save_checkpoints_steps=20", "--train_steps=80"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    done = restart_cases.run_to_end(["--engine=keras", "--data=digits", "--backbone=small_cnn", "--train_steps=150",
                                     "--eval_throttle_secs=0", "--save_checkpoints_steps=1000"], run)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(run / "keras_model.h5")


def summary_of(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_cached_run_matches_the_uncached_one_and_serves_the_full_model(tmp_path, base_model):
    cached_dir, plain_dir = tmp_path / "cached", tmp_path / "plain"
    cached = summary_of(restart_cases.run_to_end(ARGS + [f"--base_model={base_model}"], cached_dir))
    plain = summary_of(restart_cases.run_to_end([a for a in ARGS if a != "--cache_features"] +
                                                [f"--base_model={base_model}"], plain_dir))
    assert cached["global_step"] == plain["global_step"] == 80
    # The same recipe on the same features (only the trunk pass is saved): the same model, to float error.
    assert cached["accuracy"] == pytest.approx(plain["accuracy"], abs=0.01)
    assert cached["loss"] == pytest.approx(plain["loss"], rel=0.02, abs=1e-3)
    info = json.loads((cached_dir / "run_info.json").read_text())
    assert info["feature_cache"]["shape"] == [64] and info["feature_cache"]["train_examples"] > 300
    # The checkpoints hold the head only; keras_model.h5 and the SavedModel are the full model, images in.
    names = tf.train.load_checkpoint(str(cached_dir / "model.ckpt-80")).get_variable_to_shape_map()
    assert not any(n.startswith("conv1/") for n in names) and any(n.startswith("probabilities/") for n in names)
    full = tf.keras.models.load_model(cached_dir / "keras_model.h5", compile=False)
    assert "base_trunk" in [layer.name for layer in full.layers] and full.input_shape == (None, 8, 8, 3)
    serving = tf.saved_model.load(cached["export"]).signatures["serving_default"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(serving(image=tf.constant(x))["probabilities"].numpy(), full.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)
    # The evaluation (the head on cached validation features) is the full model's on the images.
    metrics = json.loads((cached_dir / "eval_metrics.json").read_text())
    validation = data.load(Config(data="digits", classes=("3", "5", "8"))).validation
    images = np.repeat(validation.x["x"], 3, -1)
    full.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    on_images = full.evaluate(images, validation.labels, verbose=0, return_dict=True)
    assert on_images["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    # keras_model.h5 serves calibrated probabilities (--calibrate=temperature): undone, the evaluation's loss.
    trained = calibration.scale(full.predict(images, verbose=0), 1.0 / served_temperature(metrics))
    assert calibration.nll(trained, validation.labels) == pytest.approx(metrics["loss"], rel=1e-4)
    matrix = tf.math.confusion_matrix(validation.labels, full.predict(images, verbose=0).argmax(-1),
                                      num_classes=3).numpy().tolist()
    assert metrics["confusion_matrix"]["matrix"] == matrix
    # More steps on the same folder: resumed from the head-only checkpoint.
    more = restart_cases.run_to_end([a.replace("--train_steps=80", "--train_steps=100") for a in ARGS] +
                                    [f"--base_model={base_model}"], cached_dir)
    assert summary_of(more)["global_step"] == 100 and "resuming from step 80" in more.stderr


@pytest.mark.parametrize("step", [20, pytest.param(60, marks=pytest.mark.slow)])
def test_a_killed_cached_run_resumes_to_the_uninterrupted_result(tmp_path, base_model, step):
    args = ARGS + [f"--base_model={base_model}", "--optimizer=sgd", "--keep_checkpoint_max=100"]
    whole = summary_of(restart_cases.run_to_end(args, tmp_path / "whole"))
    run = tmp_path / "killed"
    code, err, what = restart_cases.interrupted_run(args, run, {"step": step, "how": "kill"})
    assert code == -9 and what == "signal sent", err[-2000:]
    again = summary_of(restart_cases.run_to_end(args, run))
    assert again["global_step"] == whole["global_step"] == 80
    assert again["accuracy"] == pytest.approx(whole["accuracy"], abs=1e-6)
    a = tf.train.load_checkpoint(str(run / "model.ckpt-80"))
    b = tf.train.load_checkpoint(str(tmp_path / "whole" / "model.ckpt-80"))
    for name in a.get_variable_to_shape_map():
        if not name.startswith("training/"):
            np.testing.assert_allclose(a.get_tensor(name), b.get_tensor(name), atol=1e-6, err_msg=name)
    assert (run / "keras_model.h5").exists() and os.listdir(run / "export" / "best")


@pytest.mark.parametrize("extra, fragment", [
    (["--freeze=none"], "needs the whole trunk frozen"),
    (["--augment=flip"], "needs unaugmented training input"),
    (["--strategy=mirrored", "--num_cpu_replicas=2"], "--cache_features runs on one device"),
    (["--fine_tune_steps=20"], "train the trunk, which --cache_features cannot"),
])
def test_what_a_cache_cannot_do_is_one_error_line(tmp_path, base_model, extra, fragment):
    proc = restart_cases.run_to_end(ARGS + [f"--base_model={base_model}", *extra], tmp_path / "run")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "feature_cache").exists()
