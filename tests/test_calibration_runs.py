"""--calibrate=temperature on real runs (issue 30), on every engine the runtime has: an overconfident model (long
training, no smoothing) gets a temperature above 1 and a lower calibration error with the same accuracy; the served
SavedModel (export/calibrated/), keras_model.h5 and the TFLite model all serve the calibrated probabilities, the
best export's scaled by that temperature, with the same classes; a run killed during or after the calibration redoes
it on the rerun to the same temperature and one calibrated export; --calibrate=none serves the probabilities as
trained."""
import json

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO  # noqa: F401 - puts the repository on the path.
from trainer.outputs import calibration, export

pytestmark = pytest.mark.tf221


def engines():
    try:
        import tensorflow_estimator  # noqa: F401

        return ["keras", "estimator"]
    except ImportError:
        return ["keras"]


ARGS = ["--data=digits", "--backbone=mlp", "--head_units=256", "--train_steps=1500", "--learning_rate=0.01",
        "--save_checkpoints_steps=500", "--eval_throttle_secs=0"]
X = np.random.default_rng(0).uniform(0, 16, (16, 8, 8, 3)).astype(np.float32)  # Digits as the model takes them.


def served_temperature(metrics: dict) -> float:
    """The temperature folded into the served model (1.0 when none was applied: calibration.method is none)."""
    record = metrics.get("calibration") or {}
    return record["temperature"] if record.get("method") == "temperature" else 1.0


def summary_of(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def served(export_dir):
    signature = tf.saved_model.load(export_dir).signatures["serving_default"]
    name = list(signature.structured_input_signature[1])[0]
    out = signature(**{name: tf.constant(X)})
    return out["probabilities"].numpy(), out["classes"].numpy()


@pytest.mark.parametrize("engine", engines())
def test_an_overconfident_model_is_served_calibrated_everywhere(tmp_path, engine):
    run = tmp_path / "run"
    summary = summary_of(restart_cases.run_to_end(ARGS + [f"--engine={engine}", "--export_tflite=float32"], run))
    metrics = json.loads((run / "eval_metrics.json").read_text())
    record = metrics["calibration"]
    assert record["method"] == "temperature" and record["temperature"] > 1.2 and record["n"] == 385
    assert record["after"]["ece"] < record["before"]["ece"] and record["after"]["nll"] < record["before"]["nll"]
    assert "/export/calibrated/" in summary["export"]
    calibrated, classes = served(summary["export"])
    best = export.latest_export(str(run), "best")  # The best evaluation's export: the probabilities as trained.
    raw, raw_classes = served(best)
    np.testing.assert_allclose(calibrated, calibration.scale(raw, record["temperature"]), atol=1e-5)
    assert np.array_equal(classes, raw_classes) and np.array_equal(calibrated.argmax(1), raw.argmax(1))
    assert calibrated.max(axis=1).mean() < raw.max(axis=1).mean()  # Less sure than the overconfident model.
    h5 = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    np.testing.assert_allclose(h5.predict(X, verbose=0), calibrated, atol=1e-5)
    interpreter = tf.lite.Interpreter(model_path=str(run / "export" / "tflite" / "model.tflite"))
    interpreter.allocate_tensors()
    given, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    lite = []
    for x in X:
        interpreter.set_tensor(given["index"], x[None].astype(given["dtype"]))
        interpreter.invoke()
        lite.append(interpreter.get_tensor(output["index"])[0])
    np.testing.assert_allclose(np.array(lite), calibrated, atol=1e-4)
    assert "Reliability" in (run / "report.html").read_text()


@pytest.mark.parametrize("point", ["finish_calibration", pytest.param("finish_export", marks=pytest.mark.slow)])
def test_a_run_killed_around_the_calibration_redoes_it_on_the_rerun(tmp_path, point):
    args = ARGS + ["--engine=keras", "--train_steps=600"]
    whole = summary_of(restart_cases.run_to_end(args, tmp_path / "whole"))
    run = tmp_path / "killed"
    code, err, _ = restart_cases.interrupted_run(args, run, {"point": point, "how": "kill"})
    assert code == -9, err[-2000:]
    again = summary_of(restart_cases.run_to_end(args, run))
    a = json.loads((run / "eval_metrics.json").read_text())["calibration"]
    b = json.loads((tmp_path / "whole" / "eval_metrics.json").read_text())["calibration"]
    assert a["temperature"] == pytest.approx(b["temperature"], rel=1e-6)
    assert len(list((run / "export" / "calibrated").iterdir())) == 1
    np.testing.assert_allclose(served(again["export"])[0], served(whole["export"])[0], atol=1e-6)


def test_calibrate_none_serves_the_probabilities_as_trained(tmp_path):
    run = tmp_path / "run"
    summary = summary_of(restart_cases.run_to_end(ARGS[:4] + ["--train_steps=200", "--calibrate=none",
                                                             "--engine=keras"], run))
    assert "/export/best/" in summary["export"] and not (run / "export" / "calibrated").exists()
    assert "calibration" not in json.loads((run / "eval_metrics.json").read_text())


def test_a_warm_start_from_a_calibrated_model_starts_from_the_weights_as_trained(tmp_path):
    """keras_model.h5 holds the output layer divided by T; a run warm-started from it takes T back out (recorded),
    so the next retraining does not start from tempered logits."""
    first = tmp_path / "first"
    summary_of(restart_cases.run_to_end(ARGS + ["--engine=keras", "--train_steps=600"], first))
    temperature = json.loads((first / "eval_metrics.json").read_text())["calibration"]["temperature"]
    best = tf.train.load_checkpoint(export.export_weights(export.latest_export(str(first), "best")))
    second = tmp_path / "second"
    summary_of(restart_cases.run_to_end(ARGS[:4] + ["--engine=keras", "--train_steps=1", "--learning_rate=1e-9",
                                                    "--calibrate=none", f"--warm_start_from={first / 'keras_model.h5'}"],
                                        second))
    record = json.loads((second / "run_info.json").read_text())["warm_start"]
    assert record["calibration_temperature_undone"] == pytest.approx(temperature)
    model = tf.keras.models.load_model(second / "keras_model.h5", compile=False)
    kernel, bias = model.get_layer("probabilities").get_weights()
    np.testing.assert_allclose(kernel, best.get_tensor("probabilities/kernel"), atol=1e-5)
    np.testing.assert_allclose(bias, best.get_tensor("probabilities/bias"), atol=1e-5)


def test_a_two_phase_run_stopped_early_in_its_first_phase_exports_the_calibrated_model(tmp_path):
    """Early stopping decided in phase 1 of 2 (the stages had built phase 2's model, not compiled, when they
    stopped): the Keras engine's export of the calibrated weights signs that model anew. Found by the restart fuzz's
    seed 3 on TF 2.15: the signature captured the phase-1 model's variables ("untracked resource")."""
    run = tmp_path / "run"
    args = ["--data=digits", "--classes=0,1,2,3,4,5", "--backbone=small_cnn", "--freeze=1", "--fine_tune_freeze=all",
            "--train_steps=40", "--fine_tune_steps=17", "--optimizer=rmsprop", "--learning_rate=0.002",
            "--label_smoothing=0.1", "--early_stopping_patience=1", "--early_stopping_min_delta=0.02",
            "--save_checkpoints_steps=5", "--eval_throttle_secs=0", "--batch_size=16", "--seed=97", "--engine=keras"]
    summary = summary_of(restart_cases.run_to_end(args, run))
    info = json.loads((run / "run_info.json").read_text())
    assert info["early_stopped_at_step"] is not None and info["early_stopped_at_step"] <= 40
    record = json.loads((run / "eval_metrics.json").read_text())["calibration"]
    assert record["method"] == "temperature" and "/export/calibrated/" in summary["export"]
    h5 = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    np.testing.assert_allclose(served(summary["export"])[0], h5.predict(X, verbose=0), atol=1e-5)
