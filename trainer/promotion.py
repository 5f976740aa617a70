"""After training: evaluate challenger and champion on this run's evaluation data, promote or not.

Both models are evaluated the same way (their keras_model.h5, Keras `evaluate`, this
run's evaluation input pipeline), so the comparison is fair even when the champion
was trained on older data. Also: `--warm_start_from`, the weights a new run starts from.
"""
import os
import tempfile
from typing import Callable, Optional

import tensorflow as tf

from trainer import champion, console, models
from trainer.config import Config
from trainer.errors import UsageError


def load_keras(path: str) -> tf.keras.Model:
    """Loads a keras_model.h5 (from any filesystem) as new, uncompiled Keras objects."""
    if "://" in path:  # h5py reads local files only.
        local = os.path.join(tempfile.mkdtemp(), "keras_model.h5")
        tf.io.gfile.copy(path, local, overwrite=True)
        path = local
    return tf.keras.models.load_model(path, compile=False)


def evaluate_keras(path: str, input_fn: Callable, config: Config) -> dict:
    model = load_keras(path)
    models.compile_model(model, config)
    return {k: float(v) for k, v in model.evaluate(input_fn(), verbose=0, return_dict=True).items()}


def run(config: Config, model_dir: str, export_path: str, eval_input_fn: Callable) -> dict:
    """Decides and, if the challenger wins, promotes it. Returns the record for run_info.json."""
    metric = config.promote_metric
    store = champion.open_store(config.champion_dir)
    pointer, token = store.read_pointer()
    keras_h5 = os.path.join(model_dir, "keras_model.h5")
    challenger = evaluate_keras(keras_h5, eval_input_fn, config)
    record = {"promoted": False, "metric": metric, "challenger": challenger.get(metric), "champion": None,
              "champion_version": pointer["version"] if pointer else None}
    if metric not in challenger:
        record["reason"] = f"the challenger has no metric {metric} (it has {', '.join(sorted(challenger))})"
        return record
    if pointer:
        try:
            record["champion"] = evaluate_keras(store.keras_model(pointer["version"]), eval_input_fn,
                                                config).get(metric)
        except (ValueError, tf.errors.InvalidArgumentError) as e:
            record["reason"] = (f"the champion {pointer['version']} cannot be evaluated on this run's data "
                                f"({type(e).__name__}: {str(e)[:160]}); not promoting")
            return record
    promote, record["reason"] = champion.decide(metric, record["challenger"], record["champion"],
                                                config.promote_min_delta)
    if promote:
        version = champion.new_version()
        console.say("promotion: copying the challenger to version %s", version)
        won = champion.promote(store, token, version, export_path, keras_h5, {**challenger, "metric": metric},
                               model_dir, pointer["version"] if pointer else None)
        record.update(promoted=won, version=version)
        if not won:
            record["reason"] = "another run replaced CHAMPION.json first (lost the race); not promoted"
    console.say("promotion: %s (%s)", "promoted" if record["promoted"] else "not promoted", record["reason"])
    return record


def warm_start_path(config: Config) -> Optional[str]:
    """The Keras weights file (or checkpoint) --warm_start_from names; None: nothing to start from."""
    source = config.warm_start_from
    if source == "champion":
        if not config.champion_dir:
            raise UsageError("--warm_start_from=champion needs --champion_dir")
        path = champion.current_keras_model(config.champion_dir)
        if path is None:
            console.say("--warm_start_from=champion: no champion yet, starting from the usual weights")
        return path
    return source


def apply_warm_start(model: tf.keras.Model, config: Config) -> Optional[str]:
    """Loads --warm_start_from weights into `model`; returns what was loaded from."""
    from trainer import export, gcs

    path = warm_start_path(config)
    if path is None:
        return None
    path = gcs.localize(path, "warm_start_from") if path.endswith((".h5", ".hdf5")) else path
    try:
        if tf.io.gfile.isdir(path):
            checkpoint = tf.train.latest_checkpoint(path)
            if checkpoint is None:
                raise UsageError(f"--warm_start_from={path} holds no checkpoint")
            export.restore_from_checkpoint(model, checkpoint)
        elif tf.io.gfile.exists(path):
            model.load_weights(path)
        else:
            raise UsageError(f"--warm_start_from={path} does not exist")
    except ValueError as e:
        raise UsageError(f"--warm_start_from={path} does not fit this model: {str(e)[:200]}") from None
    console.say("warm start: weights loaded from %s", path)
    return path
