"""--cache_features: trains on cached trunk outputs with the run's whole recipe, exports the full model,
refuses when it must. And every input pipeline runs without the tf.data autotuner (whose thread stalled
Session close).

Speed is measured by scripts/benchmark.py, not here: CI stays independent of machine speed.
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from test_console_report import report_data
from test_recipe import scalars
from trainer.data import sources as data
from trainer.stages import experiment
from trainer.model import feature_cache
from trainer.data import inputs
from trainer.config import Config
from test_calibration_runs import served_temperature
from trainer.outputs import calibration, export
from trainer.errors import UsageError

COMMON = dict(data="digits", classes=("3", "5", "8"), eval_throttle_secs=0, save_checkpoints_steps=1000,
              batch_size=32, learning_rate=0.01, train_steps=80)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    experiment.train_and_evaluate(Config(data="digits", backbone="small_cnn", model_dir=str(run), train_steps=150,
                                         eval_throttle_secs=0, save_checkpoints_steps=1000))
    return str(run / "keras_model.h5")


def test_cached_run_matches_uncached_and_exports_the_full_model(tmp_path, base_model):
    cached = experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                                  model_dir=str(tmp_path / "cached"), **COMMON))
    plain = experiment.train_and_evaluate(Config(base_model=base_model, model_dir=str(tmp_path / "plain"), **COMMON))
    assert cached["global_step"] == plain["global_step"] == 80
    assert cached["accuracy"] == pytest.approx(plain["accuracy"], abs=0.03)
    assert cached["loss"] == pytest.approx(plain["loss"], rel=0.15, abs=0.02)
    # The final evaluation is the head's on cached validation features: the full model's on the images.
    metrics = json.loads((tmp_path / "cached" / "eval_metrics.json").read_text())
    last = metrics.get("last_evaluation", metrics)  # The top level is the served (best) model's.
    assert {"accuracy", "loss", "global_step", "macro_f1", "per_class", "confusion_matrix", "export_metrics"} <= \
        set(metrics) and last["global_step"] == 80
    assert last["accuracy"] == cached["accuracy"] and last["loss"] == cached["loss"]
    assert set(metrics["per_class"]) == {"3", "5", "8"}
    info = json.loads((tmp_path / "cached" / "run_info.json").read_text())
    assert info["feature_cache"]["shape"] == [64] and info["feature_cache"]["train_examples"] > 300
    # keras_model.h5 and the SavedModel are the full model: raw pixels in, the trunk inside.
    full = tf.keras.models.load_model(tmp_path / "cached" / "keras_model.h5", compile=False)
    assert "base_trunk" in [layer.name for layer in full.layers] and full.input_shape == (None, 8, 8, 3)
    serving = tf.saved_model.load(cached["export"]).signatures["serving_default"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(serving(image=tf.constant(x))["probabilities"].numpy(), full.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)
    validation = data.load(Config(data="digits", classes=COMMON["classes"])).validation
    full.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    on_images = full.evaluate(np.repeat(validation.x["x"], 3, -1), validation.labels, verbose=0, return_dict=True)
    assert on_images["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    # Estimator's loss is the mean of batch means (a smaller last batch weighs more): close, not equal. The
    # served keras_model.h5 is calibrated (--calibrate=temperature): its probabilities as trained are compared.
    trained = calibration.scale(full.predict(np.repeat(validation.x["x"], 3, -1), verbose=0),
                                1.0 / served_temperature(metrics))
    assert calibration.nll(trained, validation.labels) == pytest.approx(metrics["loss"], rel=0.05)
    # The per-class figures (from the head on cached features, in eval_metrics.json and report.html) are
    # the full model's on the images.
    on_images_matrix = tf.math.confusion_matrix(validation.labels, full.predict(
        np.repeat(validation.x["x"], 3, -1), verbose=0).argmax(-1), num_classes=3).numpy().tolist()
    assert metrics["confusion_matrix"]["matrix"] == on_images_matrix
    assert report_data(tmp_path / "cached" / "report.html")["confusion_matrix"] == on_images_matrix
    # Resuming a cached run continues from its head-only checkpoint.
    more = experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                                model_dir=str(tmp_path / "cached"), **{**COMMON, "train_steps": 100}))
    assert more["global_step"] == 100
    # The same command again, nothing left to train: the metrics come from a fresh evaluation.
    again = experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                                 model_dir=str(tmp_path / "cached"), **{**COMMON, "train_steps": 100}))
    assert again["global_step"] == 100 and again["accuracy"] == pytest.approx(more["accuracy"], abs=1e-6)
    # Resumed with another learning rate: a new phase at it (a fresh optimizer state), as in uncached runs.
    experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True, model_dir=str(tmp_path / "cached"),
                                         **{**COMMON, "train_steps": 120, "learning_rate": 0.05}))
    phases = json.loads((tmp_path / "cached" / "run_info.json").read_text())["phases"]
    assert [(p["first_step"], p["last_step"], p["learning_rate"]) for p in phases] == [(0, 100, 0.01), (100, 120, 0.05)]
    rates = scalars(tmp_path / "cached", "learning_rate")
    assert rates[1] == pytest.approx(0.01) and rates[101] == pytest.approx(0.05)


def test_cached_run_follows_the_recipe(tmp_path, base_model):
    """Schedules, class weights, top-k, early stopping and the best export apply to cached runs too
    (they were silently ignored: constant rate, no early stop, the last model exported as best)."""
    run = tmp_path / "run"
    summary = experiment.train_and_evaluate(Config(
        base_model=base_model, cache_features=True, model_dir=str(run), **{**COMMON, **dict(
            train_steps=300, learning_rate=1e-7, lr_schedule="cosine", warmup_steps=5, class_weight="balanced",
            top_k=2, save_checkpoints_steps=10, early_stopping_patience=2, early_stopping_min_delta=0.05)}))
    info = json.loads((run / "run_info.json").read_text())
    assert info["early_stopped_at_step"] is not None and summary["global_step"] < 100
    assert len(info["class_weights"]) == 3 and info["class_weights"][0] != 1.0
    rates = scalars(run, "learning_rate")
    assert rates[1] == pytest.approx(1e-7 / 5) and max(rates.values()) <= 1e-7 * (1 + 1e-5)
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    assert summary["global_step"] == best["metrics"]["global_step"] == 10 and isinstance(summary["global_step"], int)
    assert (run / "model.ckpt-30.index").exists()  # Trained on to the early stop after the best.
    metrics = json.loads((run / "eval_metrics.json").read_text())
    assert "top_k_accuracy" in metrics and metrics["confusion_matrix"]["matrix"] == best["confusion_matrix"]
    # The best export is the full model (images in) with the best evaluation's weights (step 10's, not the
    # last checkpoint's: at this rate they differ only in the last digits), as is keras_model.h5.
    best_export = export.latest_export(str(run), "best")  # As trained; the served one is calibrated from it.
    exported = tf.train.load_checkpoint(f"{best_export}/variables/variables")
    names = [n for n in tf.train.load_checkpoint(str(run / "model.ckpt-10")).get_variable_to_shape_map()
             if n.startswith("probabilities/")]
    assert names and all(np.array_equal(exported.get_tensor(n), tf.train.load_checkpoint(
        str(run / "model.ckpt-10")).get_tensor(n)) for n in names)
    assert not all(np.array_equal(exported.get_tensor(n), tf.train.load_checkpoint(
        str(run / "model.ckpt-30")).get_tensor(n)) for n in names)
    assert "conv1/kernel" in exported.get_variable_to_shape_map()  # The trunk is inside.
    serving = tf.saved_model.load(summary["export"]).signatures["serving_default"]
    full = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    x = np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(serving(image=tf.constant(x))["probabilities"].numpy(), full.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)


def test_input_pipelines_run_without_the_autotuner(tmp_path):
    """The autotuner's thread sleeps up to a minute and Session close waited for it (issue 15)."""
    dataset = data.load(Config(data="digits"))
    for split, training in ((dataset.train, True), (dataset.validation, False)):
        ds = inputs.make_input_fn(split, training=training, batch_size=8, input_names=["image"],
                                  output_names=["out"], label_mode="sparse", num_classes=10, image_size=8)()
        assert ds.options().autotune.enabled is False
    path = tmp_path / "features.f32"
    path.write_bytes(np.zeros((4, 2), np.float32).tobytes())
    for training in (True, False):
        ds = feature_cache.make_feature_input_fn(str(path), (2,), np.zeros(4, np.int64), "out", training=training,
                                                 batch_size=2, seed=0)()
        assert ds.options().autotune.enabled is False


@pytest.mark.parametrize("kw, fragment", [
    (dict(freeze="none"), "needs the whole trunk frozen"),
    (dict(freeze="-2"), "needs the whole trunk frozen"),
    (dict(augment=(("flip", 0.0),)), "needs unaugmented training input"),
])
def test_cache_features_refuses(tmp_path, base_model, kw, fragment):
    with pytest.raises(UsageError, match=fragment):
        experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                             model_dir=str(tmp_path / "run"), **{**COMMON, **kw}))


def test_cached_run_skips_bad_records_met_by_the_trunk_pass(capsys, tmp_path):
    from test_bad_inputs import cli
    from test_faults import damage, write_shards

    train = write_shards(tmp_path / "records", "train", shards=2, per_shard=60)
    write_shards(tmp_path / "records", "validation", shards=1, per_shard=20, bad_image_at={(0, 7)})
    damage(train[0], 0.5)
    records = tmp_path / "records"
    status, errors = cli(capsys, f"--data={records / 'train-*'}", f"--eval_data={records / 'validation-*'}",
                         f"--labels_file={records / 'labels.txt'}", "--backbone=small_cnn", "--image_size=12",
                         "--batch_size=8", "--train_steps=20", "--freeze=all", "--cache_features",
                         f"--model_dir={tmp_path / 'run'}")
    assert status == 0 and not errors
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    reasons = {(s["shard"].rsplit("/", 1)[1], s["reason"].split(" (")[0]) for s in info["skipped_records"]}
    assert ("train-00000-of-00002.tfrecord", "corrupt record header") in reasons or \
        ("train-00000-of-00002.tfrecord", "corrupt record") in reasons, reasons
    assert ("validation-00000-of-00001.tfrecord", "image bytes do not decode") in reasons
    assert info["feature_cache"]["train_examples"] < 120


def test_report_of_a_cached_run_without_its_evaluation_predictions(capsys, tmp_path, base_model, monkeypatch):
    """When the served model's evaluation ran in another process, the head predicts on the cached features."""
    from test_bad_inputs import cli
    from test_console_report import assert_same_as_a_fresh_report
    from trainer.outputs import metrics

    monkeypatch.setattr(metrics, "collected", lambda model_dir, step: None)
    run = tmp_path / "run"
    status, errors = cli(capsys, f"--base_model={base_model}", "--data=digits", "--classes=3,5,8", "--cache_features",
                         "--train_steps=80", "--learning_rate=0.01", f"--model_dir={run}")
    assert status == 0 and not errors
    page = (run / "report.html").read_text()
    assert "From the predictions of the model on the 117 evaluation examples" in page  # Not the evaluation's.
    matrix = json.loads((run / "eval_metrics.json").read_text())["confusion_matrix"]["matrix"]
    assert report_data(run / "report.html")["confusion_matrix"] == matrix
    assert_same_as_a_fresh_report(run, with_images=False)  # Its few mistakes, if any, are the same images.


def test_cached_resume_keeps_the_trunk_the_head_was_trained_with(capsys, tmp_path, base_model):
    from test_bad_inputs import cli

    base_run = base_model.rsplit("/", 1)[0]
    common = dict(data="digits", classes=("3", "5", "8"), backbone="small_cnn", weights="none",
                  warm_start_from=base_run, freeze="all", cache_features=True, batch_size=32, learning_rate=0.01,
                  save_checkpoints_steps=1000, eval_throttle_secs=0, model_dir=str(tmp_path / "run"))
    experiment.train_and_evaluate(Config(train_steps=40, **common))
    resumed = experiment.train_and_evaluate(Config(train_steps=60, **common))
    # The trunk comes from --warm_start_from on the restart too (the checkpoints hold the head only): the
    # features, keras_model.h5 and the export are the warm start's trunk, not the --weights=none one.
    base = tf.keras.models.load_model(base_model, compile=False)
    full = tf.keras.models.load_model(tmp_path / "run" / "keras_model.h5", compile=False)
    trunk = {w.name: w.numpy() for w in full.get_layer("small_cnn").weights}
    assert trunk and all(np.array_equal(trunk[w.name], w.numpy()) for w in base.get_layer("small_cnn").weights)
    assert resumed["accuracy"] > 0.9
    # A checkpoint whose trunk was trained (an uncached run) is not resumed with --cache_features.
    tuned = tmp_path / "tuned"
    experiment.train_and_evaluate(Config(base_model=base_model, freeze="none", model_dir=str(tuned),
                                         **{**COMMON, "train_steps": 20}))
    status, errors = cli(capsys, f"--base_model={base_model}", "--data=digits", "--classes=3,5,8",
                         "--cache_features", "--freeze=all", "--train_steps=40", f"--model_dir={tuned}")
    assert status == 1 and len(errors) == 1 and "holds a checkpoint whose trunk differs" in errors[0], errors
