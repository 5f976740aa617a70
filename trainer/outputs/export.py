"""Exports: the serving SavedModels (Estimator exporters) and keras_model.h5.

The Estimator trains a clone of the Keras model in its own graph; its
checkpoints (saver format) name variables exactly as the Keras layers name
their weights, so the trained model is recovered by assigning each checkpoint
tensor to the weight of the same name.
"""
import json
import os
import tempfile
import uuid
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import metric_registry
from trainer.util import files
from trainer.model import ema

EXPORTER_NAMES = {"best": "best", "latest": "latest", "final": "final"}


BEST_RECORD = "best.json"  # export/best/best.json: the best evaluation so far and its export.
CLASS_NAMES = "class_names.json"  # In a SavedModel's assets.extra/: the names its `classes` output gathers from.
EXPORT_WEIGHTS = os.path.join("keras_weights", "weights")  # In a Keras-engine export: the weights by Keras name.


def export_weights(export_dir: str) -> str:
    """The name-keyed checkpoint of an export version: the Keras engine writes one beside its SavedModel
    (keras_weights/); the Estimator's SavedModel variables are themselves named as the Keras weights."""
    ours = os.path.join(export_dir, EXPORT_WEIGHTS)
    if tf.io.gfile.exists(ours + ".index"):
        return ours
    variables = os.path.join(export_dir, "variables", "variables")
    try:
        names = tf.train.load_checkpoint(variables).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        return variables
    if not any(n.startswith("weights/") and n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in names):
        return variables  # An Estimator export: its variables are named as the Keras weights.
    return _rebuild_keras_weights(export_dir, ours)


def _rebuild_keras_weights(export_dir: str, path: str) -> str:
    """A Keras-engine export whose keras_weights/ is gone (SRE trial B2): the name-keyed copy made again from the
    SavedModel's own variables (restored under their Keras names), written back into the export atomically."""
    loaded = tf.saved_model.load(export_dir)
    tensors = {v.name.split(":")[0]: v for v in getattr(loaded, "weights", [])}
    if not tensors:
        raise ValueError(f"the export {export_dir} has no keras_weights/ and no weights to rebuild it from")
    temporary = os.path.join(export_dir, f"temp-keras-weights-{uuid.uuid4().hex[:8]}")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=os.path.join(temporary, "weights"), tensor_names=names,
                      shape_and_slices=[""] * len(names), tensors=[tf.convert_to_tensor(tensors[n]) for n in names])
    folder = os.path.dirname(path)
    if tf.io.gfile.exists(folder) and not tf.io.gfile.exists(path + ".index"):
        tf.io.gfile.rmtree(folder)  # There but incomplete (a copy cut short): replaced.
    try:
        tf.io.gfile.rename(temporary, folder)
    except tf.errors.OpError:  # Made meanwhile (another process): use that one if it is whole.
        tf.io.gfile.rmtree(temporary)
        if not tf.io.gfile.exists(path + ".index"):
            raise
    logging.warning("the export %s had no keras_weights/: rebuilt it from the SavedModel's variables", export_dir)
    return path


def checkpoint_is_finite(checkpoint: str) -> bool:
    """True when every floating-point tensor of the checkpoint is finite (no NaN, no inf)."""
    reader = tf.train.load_checkpoint(checkpoint)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(name))):
            return False
    return True


def read_best_record(export_root: str, metric: Optional[str] = None) -> Optional[dict]:
    """The best.json of an export/best folder, when it names an export that still exists.

    A damaged record (truncated, not JSON, naming no export that exists) is rebuilt from the run's evaluation
    events and the exports on disk, and written again: left as it was, the next evaluation, however bad, would
    be exported as "best" (SRE trial W3). `metric` is the one the best export compares (None: the record's).
    """
    path = os.path.join(export_root, BEST_RECORD)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            record = json.load(f)
        version = os.path.join(export_root, str(record["export"]))
        if not isinstance(record["metrics"], dict):
            raise TypeError("metrics")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, tf.errors.OpError):
        return _rebuilt_best_record(export_root, metric, "not readable")
    compared = metric or record.get("metric") or "accuracy"
    wrong = [k for k, v in record["metrics"].items() if isinstance(v, bool) or not isinstance(v, (int, float))
             or not np.isfinite(v)]
    if wrong or compared not in record["metrics"]:  # SRE trial B1: "high" compared with a float, on every rerun.
        why = f"unusable (non-numeric {', '.join(sorted(wrong))})" if wrong else f"unusable (no {compared})"
        return _rebuilt_best_record(export_root, metric or record.get("metric"), why)
    if not tf.io.gfile.exists(os.path.join(version, "saved_model.pb")):
        return _rebuilt_best_record(export_root, metric or record.get("metric"), f"its export {record['export']} "
                                    "is missing")
    try:  # Older records hold it as a float.
        record["metrics"]["global_step"] = int(record["metrics"]["global_step"])
    except (KeyError, TypeError, ValueError):
        pass
    return {**record, "export": version}


def _rebuilt_best_record(export_root: str, metric: Optional[str], why: str) -> Optional[dict]:
    """The best evaluation so far (from eval/ events) and the newest complete best export (a best export is
    written only when its evaluation beats every earlier one, so the newest is the best so far)."""
    from trainer.util import events

    metric = metric or "accuracy"
    exports = sorted((v.rstrip("/") for v in tf.io.gfile.listdir(export_root) if v.rstrip("/").isdigit()), key=int)
    exports = [v for v in exports if tf.io.gfile.exists(os.path.join(export_root, v, "saved_model.pb"))]
    model_dir = os.path.dirname(os.path.dirname(export_root.rstrip("/")))
    scalars = events.evaluations(model_dir)
    key = metric if metric in scalars else ("accuracy" if "accuracy" in scalars else "loss")
    found = events.best(scalars.get(key, []), higher_is_better=not metric_registry.lower_is_better(key))
    if not exports or found is None:
        logging.warning("%s is %s and cannot be rebuilt (no best export or no evaluation): the next evaluation "
                        "starts the best-model record again", os.path.join(export_root, BEST_RECORD), why)
        return None
    step = int(found[0])
    metrics = {tag: float(dict(series)[step]) for tag, series in scalars.items() if step in dict(series)}
    metrics["global_step"] = step
    record = {"metrics": metrics, "export": exports[-1], "metric": key, "rebuilt": True}
    logging.warning("%s is %s: rebuilt from the evaluation events (best so far: %s %.4f at step %d, export %s)",
                    os.path.join(export_root, BEST_RECORD), why, key, metrics[key], step, exports[-1])
    try:
        files.write_json(os.path.join(export_root, BEST_RECORD), record)
    except Exception as e:  # Read-only: the rebuilt record still serves this process.
        logging.warning("could not rewrite %s: %s", os.path.join(export_root, BEST_RECORD), e)
    return {**record, "export": os.path.join(export_root, exports[-1])}


def latest_export(model_dir: str, kind: str) -> Optional[str]:
    """For best: the export best.json names; else the newest export/<kind>/<version> with a saved_model.pb."""
    root = os.path.join(model_dir, "export", kind)
    if not tf.io.gfile.isdir(root):
        return None
    if kind == "best":
        record = read_best_record(root)
        return record["export"] if record else None
    versions = sorted((v.rstrip("/") for v in tf.io.gfile.listdir(root) if v.rstrip("/").isdigit()), key=int)
    for version in reversed(versions):
        path = os.path.join(root, version)
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return path
    return None


def save_weights_checkpoint(model: tf.keras.Model, path: str) -> str:
    """Saves the model's weights as a name-keyed (saver format) checkpoint at `path`.

    A `global_step` of 0 goes with them, as in the Estimator engine's own first checkpoint:
    an Estimator exporting straight from its warm-start checkpoint restores it.
    """
    tf.io.gfile.makedirs(os.path.dirname(path))
    # Under mixed_float16 the weights are AutoCastVariables, which a v1 Saver refuses: save what they wrap.
    variables = {w.name.split(":")[0]: getattr(w, "_variable", w) for w in model.weights}
    variables["global_step"] = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    saver = tf.compat.v1.train.Saver(var_list=variables)
    return saver.save(None, path, write_meta_graph=False)


def restore_from_checkpoint(model: tf.keras.Model, checkpoint: str) -> None:
    """Assigns the weights of `model` from a checkpoint of either engine (saver format); under --ema_decay their
    moving averages, which the checkpoint keeps as optimizer slots.

    Raises:
        ValueError: a weight of the model has no tensor of the same name and shape.
    """
    reader = tf.train.load_checkpoint(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    # --ema_decay: each weight's moving average where the checkpoint has one (trainer/model/ema.py).
    served = ema.served_values(reader, [w.name.split(":")[0] for w in model.weights])
    values = []
    for weight in model.weights:
        name = weight.name.split(":")[0]
        if name not in shapes or tuple(shapes[name]) != tuple(weight.shape):
            raise ValueError(f"checkpoint {checkpoint} has no tensor {name} of shape {tuple(weight.shape)}")
        values.append((weight, served[name]))
    tf.keras.backend.batch_set_value(values)  # Works in eager and graph mode alike.


def save_keras_model(model: tf.keras.Model, checkpoint: str, path: str,
                     full_model: Optional[tf.keras.Model] = None) -> None:
    """Writes `model` with the checkpoint's weights to `path` (.h5), atomically.

    With `full_model`, the checkpoint restores `model` (a part sharing its layers) and
    `full_model` is what is written.
    """
    # .h5 on purpose: it is what --base_model users and older tools load everywhere.
    warnings.filterwarnings("ignore", message=r".*HDF5 file via `model.save\(\)`.*")
    restore_from_checkpoint(model, checkpoint)
    model = full_model or model
    from trainer.model.keras_files import neutralize

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}.h5"
    # neutralize: without the config keys a newer Keras adds at their default (TF 2.21's InputLayer `optional`),
    # so the file loads on both runtimes (a champion or --base_model moves between them).
    if "://" in path:  # h5py writes local files only: stage it, then copy.
        with tempfile.TemporaryDirectory() as local:
            staged = os.path.join(local, "keras_model.h5")
            model.save(staged, include_optimizer=False, save_format="h5")
            neutralize(staged)
            tf.io.gfile.copy(staged, tmp, overwrite=True)
    else:
        model.save(tmp, include_optimizer=False, save_format="h5")
        neutralize(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
