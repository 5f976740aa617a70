"""The recipe's second round on real runs, on each engine the runtime has: layer-wise rates in the fine-tune phase
(recorded in its phase, a trunk that barely moves under a tiny factor while the head trains, a resume with another
factor starting a recorded phase)."""
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from test_bad_inputs import assert_error

pytestmark = [pytest.mark.tf221]
HAS_ESTIMATOR = hasattr(tf, "estimator")
ENGINES = [pytest.param("estimator", marks=pytest.mark.skipif(not HAS_ESTIMATOR, reason="needs TF 2.15")), "keras"]
TWO_PHASES = ["--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--freeze=all", "--fine_tune_freeze=none",
              "--train_steps=10", "--fine_tune_steps=10", "--optimizer=sgd", "--learning_rate=0.05",
              "--save_checkpoints_steps=10", "--eval_throttle_secs=0", "--keep_checkpoint_max=100", "--batch_size=16"]


@pytest.mark.parametrize("engine", ENGINES)
def test_layer_rates_hold_the_trunk_under_a_tiny_factor_and_are_recorded(tmp_path, engine):
    run = tmp_path / "run"
    proc = run_cli(*TWO_PHASES, "--layer_lr_decay=1e-6", f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [p.get("layer_lr_decay") for p in phases] == [None, 1e-6]
    boundary, end = (tf.train.load_checkpoint(str(run / f"model.ckpt-{s}")) for s in (10, 20))
    # conv1 is 4 layers with weights down (1e-24 of the rate), conv2 2 (1e-12): they keep their values; bn2's
    # gamma (1e-6) moves by less than 1e-6 of a full step; the head trains at the full rate.
    for name in ("conv1/kernel", "conv2/kernel"):
        np.testing.assert_allclose(end.get_tensor(name), boundary.get_tensor(name), rtol=0, atol=1e-9)
    assert not np.allclose(end.get_tensor("probabilities/kernel"), boundary.get_tensor("probabilities/kernel"))


def test_bad_values_are_one_line_each(capsys, tmp_path):
    assert_error(capsys, "--layer_lr_decay=1.5 must be in (0, 1]", "--data=digits", "--layer_lr_decay=1.5",
                 f"--model_dir={tmp_path / 'bad'}")
    assert_error(capsys, "--layer_lr_decay rates the layers of a built-in trunk", "--data=digits",
                 "--model_fn=multi_io_model:build", "--layer_lr_decay=0.9", f"--model_dir={tmp_path / 'bad2'}")


@pytest.mark.slow
def test_a_resume_with_another_factor_starts_a_recorded_phase(tmp_path):
    run = tmp_path / "run"
    first = run_cli(*TWO_PHASES, "--engine=keras", "--layer_lr_decay=0.5", f"--model_dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(*TWO_PHASES, "--engine=keras", "--layer_lr_decay=0.25", "--fine_tune_steps=20",
                    f"--model_dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--layer_lr_decay=0.25 (was 0.5)" in again.stderr
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["name"], p["first_step"], p["last_step"], p.get("layer_lr_decay")) for p in phases] == [
        ("train", 0, 10, None), ("fine_tune", 10, 20, 0.5), ("fine_tune (flags changed at step 20)", 20, 30, 0.25)]
