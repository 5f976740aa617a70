"""--cache_features on the Estimator engine: what trainer.model.feature_cache computes, trained by the Estimator,
and every SavedModel exported from the full model (trunk + the head's trained weights) through an Estimator of its
own, so that the exporters and the end of a run serve images as in an uncached run."""
import dataclasses
import shutil
import tempfile
from typing import Callable

import tensorflow as tf

from trainer.model.feature_cache import compute_all
from trainer.run import checkpoints
from trainer.outputs import export
from trainer.outputs.predictions import in_eager_thread


def export_full_model(model: tf.keras.Model, make_estimator: Callable, serving_fn, export_base: str) -> str:
    """Exports the full model (current weights) through an Estimator, for the usual serving signature."""
    scratch = tempfile.mkdtemp(prefix="full-model-")
    try:
        estimator = make_estimator(model, tf.estimator.RunConfig(model_dir=scratch))
        # Without a checkpoint of its own, the Estimator exports from its warm-start checkpoint:
        # the Keras weights model_to_estimator just wrote.
        return estimator.export_saved_model(export_base, serving_fn).decode()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass
class Cache:
    """What a cached run trains and evaluates instead of the full model on images."""

    head: tf.keras.Model  # features -> probabilities, sharing the full model's layers.
    train_input: Callable  # input_fns over the cached features.
    eval_input: Callable
    exporter: "FullModelExport"  # Stands in for the head's Estimator wherever a SavedModel is exported.


def build(config, model: tf.keras.Model, dataset, make_input: Callable, make_estimator: Callable,
          run_info: dict) -> Cache:
    """The features of both splits (trainer.model.feature_cache.compute_all) and the full model's exporter.

    Args:
        make_input: (split, training) -> the run's image input_fn.
        make_estimator: (keras model, RunConfig) -> the run's Estimator for it (used for exports).
    """
    found = compute_all(config, model, dataset, make_input, run_info,
                        lambda: checkpoints.latest_step(config.checkpoint_dir))
    return Cache(found.head, found.train_input, found.eval_input, FullModelExport(model, found.head, make_estimator))


class FullModelExport:
    """Exports the full model with a head checkpoint's weights: the `export_saved_model` of the head's
    Estimator as the exporters and the end of a run call it, so every export serves images."""

    def __init__(self, model: tf.keras.Model, head: tf.keras.Model, make_estimator: Callable):
        self._model, self._head, self._make_estimator = model, head, make_estimator

    def export_saved_model(self, export_dir_base, serving_input_receiver_fn, assets_extra=None, as_text=False,
                           checkpoint_path=None, experimental_mode=None):
        def run():
            if checkpoint_path:  # The head's layers are the full model's: restoring them completes it.
                export.restore_from_checkpoint(self._head, checkpoint_path)
            return export_full_model(self._model, self._make_estimator, serving_input_receiver_fn,
                                     export_dir_base)

        # Exporters run inside the evaluation's graph; the Keras weights are assigned eagerly.
        return in_eager_thread(run).encode()
