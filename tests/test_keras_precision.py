"""--mixed_precision and --jit on the Keras engine (issue 37), checked for correctness on the CPU (their speed is a
GPU's: scripts/benchmark_gpu.py): a run SIGKILLed right after its first checkpoint resumes to the uninterrupted run's
weights (with mixed precision, the dynamic loss scale too: it is in every checkpoint), and the exports serve float32
probabilities."""
import json

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO  # noqa: F401 - puts the repository on the path.

# Runs on TensorFlow 2.21 (the Keras engine's runtime); on TF 2.15 with `make test-slow` only.
pytestmark = [pytest.mark.tf221, pytest.mark.keras_engine]

ARGS = ["--engine=keras", "--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--batch_size=16",
        "--train_steps=24", "--save_checkpoints_steps=8", "--eval_throttle_secs=0", "--keep_checkpoint_max=100",
        "--learning_rate=0.01", "--export=final"]


def variables(run, step):
    reader = tf.train.load_checkpoint(str(run / f"model.ckpt-{step}"))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def summary_of(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flag", ["--mixed_precision", pytest.param("--jit", marks=pytest.mark.slow)])
def test_a_killed_run_resumes_to_the_uninterrupted_weights_and_serves_float32(tmp_path, flag):
    args = ARGS + [flag]
    whole = summary_of(restart_cases.run_to_end(args, tmp_path / "whole"))
    run = tmp_path / "killed"
    code, err, what = restart_cases.interrupted_run(args, run, {"point": "checkpoint_saved", "how": "kill"})
    assert code == -9 and restart_cases._latest_step(run) == 8, err[-2000:]
    again = summary_of(restart_cases.run_to_end(args, run))
    assert again["global_step"] == whole["global_step"] == 24
    a, b = variables(run, 24), variables(tmp_path / "whole", 24)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)
    scales = [n for n in a if "loss_scale" in n]
    if flag == "--mixed_precision":
        # The dynamic loss scale and its growth counter are saved, so the resumed run goes on with them.
        assert scales, sorted(a)
        run_info = json.loads((run / "run_info.json").read_text())
        assert run_info["flags"]["mixed_precision"] is True
    else:
        assert not scales
    serving = tf.saved_model.load(again["export"]).signatures["serving_default"]
    outputs = serving.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    inputs = {name: tf.constant(x) for name in serving.structured_input_signature[1]}
    probabilities = serving(**inputs)["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    model = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    assert model.output.dtype == tf.float32
