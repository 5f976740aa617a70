"""--layer_lr_decay=F: in the fine-tune phase each trunk layer trains at F^d of the phase's learning rate, d its
depth from the head (the head at 1, the trunk's top layer with weights at F, the next at F^2, ...): fastai's
discriminative rates, timm's `--layer-decay`. Layers are counted as --fine_tune_freeze counts them (a nested
--base_model by its own layers), those without weights left out.

Both engines train with the same legacy Keras optimizer (trainer/model/models.py compile_model), so the rates are
one optimizer subclass: every per-variable update scales the step size the optimizer prepared for it (`lr_t`,
`lr`, `neg_lr_t`: the keys SGD, RMSprop and Adam read) by the variable's factor. Gradients are not scaled: under
Adam or RMSprop that would change nothing. The factors are part of the optimizer's config, so the Estimator's
clone of the model (model_to_estimator rebuilds the optimizer from its config) trains with them too.
"""
import re
from typing import Dict, Optional

import tensorflow as tf

from trainer.model import ema

SCALED = ("lr_t", "lr", "neg_lr_t")


def variable_key(name: str) -> str:
    """A variable's name without its device suffix or replica copy: `conv1/kernel/replica_1:0` -> `conv1/kernel`."""
    return re.sub(r"(/replica_\d+)?(:\d+)?$", "", name)


def factors(model: tf.keras.Model, decay: float) -> Dict[str, float]:
    """{variable key: F^depth} for the trunk's trainable weights; {} when F is 1 or the model has no trunk."""
    from trainer.model.models import freeze_units

    trunks = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if decay == 1.0 or len(trunks) != 1:
        return {}
    out, depth = {}, 0
    for unit in reversed(freeze_units(trunks[0])):
        if not unit.trainable_weights:
            continue
        depth += 1
        for weight in unit.trainable_weights:
            out[variable_key(weight.name)] = decay ** depth
    return out


def with_rates(optimizer_class, layer_factors: Optional[Dict[str, float]]):
    """`optimizer_class`, or a subclass of it whose update of each variable named in `layer_factors` takes that
    share of the learning rate."""
    if not layer_factors:
        return optimizer_class
    if optimizer_class not in _SUBCLASSES:
        _SUBCLASSES[optimizer_class] = ema.registered(
            type(optimizer_class.__name__, (_LayerRates, optimizer_class), {}), "layer_rates")
    return _SUBCLASSES[optimizer_class]


_SUBCLASSES: dict = {}


class _LayerRates:
    """Mixed in before a legacy Keras optimizer (the class keeps the optimizer's name, which the console shows)."""

    def __init__(self, *args, layer_factors=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._layer_factors = dict(layer_factors or {})

    def get_config(self):
        return {**super().get_config(), "layer_factors": dict(self._layer_factors)}

    def _scaled(self, var, apply_state):
        factor = self._layer_factors.get(variable_key(var.name))
        if factor is None or factor == 1.0:
            return apply_state
        key = (var.device, var.dtype.base_dtype)
        coefficients = dict((apply_state or {}).get(key) or self._fallback_apply_state(*key))
        for name in SCALED:
            if name in coefficients:
                coefficients[name] = coefficients[name] * tf.cast(factor, coefficients[name].dtype)
        return {**(apply_state or {}), key: coefficients}

    def _resource_apply_dense(self, grad, var, apply_state=None):
        return super()._resource_apply_dense(grad, var, self._scaled(var, apply_state))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        return super()._resource_apply_sparse(grad, var, indices, self._scaled(var, apply_state))

    # Sparse gradients (embedding layers, which the built-in models do not have) reach `_resource_apply_sparse`
    # through the base class's de-duplication; plain SGD's own sparse path bypasses it and is not rated.
