"""Real train_and_evaluate runs on tiny real data: files written, exports, resume, transfer."""
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import last_json, last_run_log, run_cli
from trainer.data import sources as data_lib
from trainer.stages import experiment
from trainer.config import Config
from trainer.errors import UsageError

FAST = dict(save_checkpoints_steps=30, eval_throttle_secs=0, batch_size=32)


def read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("digits") / "run"
    config = Config(data="digits", backbone="mlp", model_dir=str(model_dir), train_steps=60, **FAST)
    return model_dir, experiment.train_and_evaluate(config)


def test_digits_run_writes_the_output_contract(digits_run):
    model_dir, summary = digits_run
    assert summary["global_step"] == 60 and summary["accuracy"] > 0.8
    assert set(summary) == {"accuracy", "loss", "global_step", "model_dir", "export"}
    metrics = read(model_dir / "eval_metrics.json")
    assert metrics["global_step"] == 60 and metrics["accuracy"] == pytest.approx(summary["accuracy"])
    info = read(model_dir / "run_info.json")
    assert info["strategy"] == "one_device" and info["num_replicas"] == 1 and info["estimator"] == "Estimator"
    assert info["tf_version"].startswith("2.15")
    assert info["class_names"] == [str(i) for i in range(10)]
    assert sum(info["counts"]["train"].values()) + sum(info["counts"]["validation"].values()) == 1797
    assert info["flags"]["backbone"] == "mlp"
    model_summary = read(model_dir / "model_summary.json")
    assert model_summary["total_params"] == model_summary["trainable_params"] + model_summary["non_trainable_params"]
    assert any(layer["name"] == "probabilities" for layer in model_summary["layers"])
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("model.ckpt-60")
    assert list((model_dir / "eval").glob("events.out.tfevents.*")), "TensorBoard eval events"
    assert not list(model_dir.glob("*.tmp-*")), "no temporary files left behind"


def validation_arrays():
    ds = data_lib.load(Config(data="digits"))
    return np.tile(ds.validation.x["x"], [1, 1, 1, 3]), ds.validation.labels


def test_keras_model_h5_reproduces_the_estimator_evaluation(digits_run):
    model_dir, summary = digits_run
    model = tf.keras.models.load_model(model_dir / "keras_model.h5", compile=False)
    x, y = validation_arrays()
    accuracy = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert accuracy == pytest.approx(summary["accuracy"], abs=1e-6)


def test_exported_saved_model_serves_the_same_predictions(digits_run):
    model_dir, summary = digits_run
    assert (model_dir / "export" / "best").is_dir()  # The exports of training; the calibrated one is served.
    assert summary["export"].startswith(str(model_dir / "export" / "calibrated"))
    serving = tf.saved_model.load(summary["export"]).signatures["serving_default"]
    x, _ = validation_arrays()
    served = serving(image=tf.constant(x[:16]))["probabilities"].numpy()
    keras = tf.keras.models.load_model(model_dir / "keras_model.h5", compile=False)
    np.testing.assert_allclose(served, keras.predict(x[:16], verbose=0), rtol=1e-4, atol=1e-6)


def test_model_dir_with_another_class_count_is_refused(digits_run):
    model_dir, _ = digits_run
    config = Config(data="digits", classes=("0", "1"), backbone="mlp", model_dir=str(model_dir), **FAST)
    with pytest.raises(UsageError, match="10 classes, this one has 2"):
        experiment.train_and_evaluate(config)


def test_rerun_resumes_from_the_latest_checkpoint(tmp_path):
    args = ["--data=digits", "--backbone=mlp", f"--model_dir={tmp_path / 'run'}", "--save_checkpoints_steps=20",
            "--eval_throttle_secs=0", "--export=latest"]
    first = run_cli(*args, "--train_steps=20")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*args, "--train_steps=40")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Restoring parameters from {tmp_path / 'run'}/model.ckpt-20" in last_run_log(tmp_path / "run")
    assert last_json(second.stdout)["global_step"] == 40
    assert "step 40/40" in second.stderr  # progress line


def test_folder_run_then_own_model_transfer_trains_only_the_head(tmp_path, image_folder):
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    experiment.train_and_evaluate(Config(
        data=str(image_folder), backbone="small_cnn", image_size=16, model_dir=str(first_dir),
        train_steps=20, **dict(FAST, batch_size=8)))
    info = read(first_dir / "run_info.json")
    assert info["class_names"] == ["cats", "dogs"]
    summary = experiment.train_and_evaluate(Config(
        data=str(image_folder), classes=("dogs", "cats"), base_model=str(first_dir / "keras_model.h5"),
        freeze="all", model_dir=str(second_dir), train_steps=20, learning_rate=0.05, **dict(FAST, batch_size=8)))
    assert summary["global_step"] == 20
    base = tf.keras.models.load_model(first_dir / "keras_model.h5", compile=False)
    new = tf.keras.models.load_model(second_dir / "keras_model.h5", compile=False)
    trunk = new.get_layer("base_trunk")
    for name in ("conv1", "bn1", "conv2", "bn2"):
        for a, b in zip(base.get_layer("small_cnn").get_layer(name).weights,
                        trunk.get_layer("small_cnn").get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert read(second_dir / "model_summary.json")["trainable_params"] == 64 * 2 + 2
    assert read(second_dir / "run_info.json")["class_names"] == ["dogs", "cats"]


def test_model_fn_with_two_inputs_and_two_outputs(tmp_path):
    ds = data_lib.load(Config(data="digits"))
    arrays = {}
    for part, split in (("train", ds.train), ("test", ds.validation)):
        pixels = split.x["x"] / 255.0
        arrays[f"x_{part}_pixels"] = pixels
        arrays[f"x_{part}_stats"] = np.stack([pixels.mean((1, 2, 3)), pixels.std((1, 2, 3))], -1)
        arrays[f"y_{part}_digit"] = split.labels
        arrays[f"y_{part}_parity"] = split.labels % 2
    np.savez(tmp_path / "multi.npz", **arrays)
    summary = experiment.train_and_evaluate(Config(
        data=str(tmp_path / "multi.npz"), model_fn="multi_io_model:build", model_dir=str(tmp_path / "run"),
        train_steps=150, learning_rate=0.01, **FAST))
    metrics = read(tmp_path / "run" / "eval_metrics.json")
    assert metrics["global_step"] == 150
    assert metrics["digit_accuracy"] > 0.5 and metrics["parity_accuracy"] > 0.5
    assert summary["export"]
