"""--layer_lr_decay's optimizer (trainer/model/layer_rates.py): each trunk layer's factor from the head down, and
updates that take exactly that share of the rate under SGD and Adam, through the config the Estimator's clone uses."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.config import Config
from trainer.model import layer_rates, models


def _model():
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    return models.build_model(Config(backbone="small_cnn", image_size=16), 3, (16, 16, 3), freeze_spec="none")


def test_factors_fall_by_f_per_layer_with_weights_from_the_head_down():
    model = _model()
    factors = layer_rates.factors(model, 0.5)
    assert factors == {"bn2/gamma": 0.5, "bn2/beta": 0.5, "conv2/kernel": 0.25, "bn1/gamma": 0.125,
                       "bn1/beta": 0.125, "conv1/kernel": 0.0625}
    assert layer_rates.factors(model, 1.0) == {}
    assert layer_rates.variable_key("conv1/kernel/replica_1:0") == "conv1/kernel"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_each_variable_moves_at_its_share_of_the_rate(optimizer):
    model = _model()
    factors = layer_rates.factors(model, 0.5)
    config = Config(backbone="small_cnn", optimizer=optimizer, learning_rate=0.01)
    models.compile_model(model, config, layer_factors=factors)
    opt = model.optimizer
    clone = type(opt).from_config(opt.get_config())  # As model_to_estimator rebuilds it in the Estimator's graph.
    assert clone.get_config()["layer_factors"] == factors and type(clone).__name__ == type(opt).__name__
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    grads = [tf.ones_like(v) for v in variables]  # Same gradient everywhere: the step is the rate's share alone.
    opt.apply_gradients(zip(grads, variables))
    plain = {"sgd": 0.01, "adam": 0.01, "rmsprop": 0.01 / np.sqrt(0.1)}[optimizer]  # rmsprop: g / sqrt(0.1 g^2).
    for var, start in zip(variables, before):
        share = factors.get(layer_rates.variable_key(var.name), 1.0)
        np.testing.assert_allclose(start - var.numpy(), plain * share, rtol=1e-3, err_msg=var.name)
    assert any(f < 1 for f in factors.values())
