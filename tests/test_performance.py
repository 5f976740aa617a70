"""--cache_features: trains on cached trunk outputs, exports the full model, refuses when it must.

Speed is measured by scripts/benchmark.py, not here: CI stays independent of machine speed.
"""
import json

import numpy as np
import pytest
import tensorflow as tf

from trainer import experiment
from trainer.config import Config
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
    info = json.loads((tmp_path / "cached" / "run_info.json").read_text())
    assert info["feature_cache"]["shape"] == [64] and info["feature_cache"]["train_examples"] > 300
    # keras_model.h5 and the SavedModel are the full model: raw pixels in, the trunk inside.
    full = tf.keras.models.load_model(tmp_path / "cached" / "keras_model.h5", compile=False)
    assert "base_trunk" in [layer.name for layer in full.layers] and full.input_shape == (None, 8, 8, 3)
    serving = tf.saved_model.load(cached["export"]).signatures["serving_default"]
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(serving(image=tf.constant(x))["probabilities"].numpy(), full.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)
    # Resuming a cached run continues from its head-only checkpoint.
    more = experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                                model_dir=str(tmp_path / "cached"), **{**COMMON, "train_steps": 100}))
    assert more["global_step"] == 100


@pytest.mark.parametrize("kw, fragment", [
    (dict(freeze="none"), "needs the whole trunk frozen"),
    (dict(freeze="-2"), "needs the whole trunk frozen"),
    (dict(augment=(("flip", 0.0),)), "needs unaugmented training input"),
])
def test_cache_features_refuses(tmp_path, base_model, kw, fragment):
    with pytest.raises(UsageError, match=fragment):
        experiment.train_and_evaluate(Config(base_model=base_model, cache_features=True,
                                             model_dir=str(tmp_path / "run"), **{**COMMON, **kw}))
