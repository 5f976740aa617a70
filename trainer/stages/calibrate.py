"""Part of stage 3 (finish), --calibrate=temperature: the served model's probabilities calibrated by one temperature
(trainer.outputs.calibration), folded into its output layer, so that every artefact made from it serves calibrated
probabilities with the same classes: keras_model.h5 (and so the TFLite model and the champion), and a SavedModel
exported by the engine from the calibrated weights into export/calibrated/<version>/.

The output layer's kernel and bias are divided by T: softmax((Wx + b) / T) (sigmoid for a binary model) is what the
temperature asks for, so no layer is added and every loader and converter reads the model as before. The temperature is fitted on the
predictions of keras_model.h5 as first written (the served weights), which is then written again calibrated. The training
checkpoints are left as they are: the calibrated weights are a name-keyed checkpoint of their own
(<checkpoint_dir>/calibrated/), written again from the served checkpoint each time the run finishes (a restart
redoes it, the same temperature from the same predictions), and the calibrated export is reused when it was made
from the same checkpoint with the same temperature.
"""
import os
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from trainer.model import ema
from trainer.model.keras_files import load_keras
from trainer.outputs import calibration, metrics
from trainer.outputs.predictions import Predictions
from trainer.util import console, files

FOLDER = "calibrated"
RECORD = "calibration.json"  # In a calibrated export: the temperature and the checkpoint it was made from.


def output_layer(model: tf.keras.Model) -> Tuple[Optional[tf.keras.layers.Layer], str]:
    """The Dense softmax/sigmoid layer whose logits a temperature divides; None and why when there is none."""
    if len(model.outputs) != 1:
        return None, "the model has several outputs"
    layer = model.get_layer(model.output_names[0]) if model.output_names else model.layers[-1]
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if not isinstance(layer, tf.keras.layers.Dense) or activation not in ("softmax", "sigmoid"):
        return None, f"its output layer {layer.name} is not a Dense softmax or sigmoid layer"
    return layer, ""


def calibrate(run, checkpoint: str, keras_h5: str) -> Tuple[str, dict, Optional[object]]:
    """(the checkpoint to serve, eval_metrics.json's `calibration` record, the calibrated model's predictions on
    the validation split for the report). The served model is `keras_h5` (images in), just written from
    `checkpoint`; the checkpoint returned is the calibrated one, or `checkpoint` itself when nothing is calibrated
    (the record says why; no predictions then)."""
    config = run.config
    # A fresh copy: the run's own Keras model cannot be called once the Estimator engine has converted it.
    served = load_keras(keras_h5)
    layer, why = output_layer(served)
    if layer is None:
        console.say("calibration: not done, %s (--calibrate=temperature needs a Dense softmax or sigmoid output)", why)
        return checkpoint, {"method": "none", "skipped": why}, None
    probabilities, ids = metrics.predict_split(served, run.make_input(run.dataset.validation, False),
                                               config.label_mode)
    record = calibration.calibrate(probabilities, ids, seed=config.seed)
    if record is None:
        why = f"{len(ids)} validation examples, fewer than 20 to fit a temperature on"
        console.say("calibration: not done, %s", why)
        return checkpoint, {"method": "none", "skipped": why}, None
    if not record.pop("applied"):  # Figures kept on record; the model is served as trained.
        why = record.pop("why")
        console.say("calibration: not applied, %s; the probabilities are served as trained", why)
        return checkpoint, dict(record, method="none", skipped=why, fitted_temperature=record.pop(
            "temperature", None)), None
    temperature = record["temperature"]
    reader = tf.train.load_checkpoint(checkpoint)
    names = reader.get_variable_to_shape_map()
    # --ema_decay: the served weights are the averages; the calibrated bundle holds them under the weights' names.
    slots = set(ema.average_names(names, names).values())
    tensors = ema.served_values(reader, [n for n in names if n not in slots])
    for weight in (w for w in (layer.kernel, layer.bias) if w is not None):  # Dense(use_bias=False): the kernel.
        name = weight.name.split(":")[0]
        tensors[name] = (tensors[name] / temperature).astype(tensors[name].dtype)
    step = os.path.basename(checkpoint).rsplit("-", 1)[-1]
    calibrated = _write_bundle(os.path.join(config.checkpoint_dir, FOLDER, f"model.ckpt-{step if step.isdigit() else 0}"),
                               tensors)
    before, after = record["before"], record["after"]
    console.say("calibration: temperature %.4f; ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f (n=%d, "
                "15 bins, cross-fitted)", temperature, before["ece"], after["ece"], before["nll"], after["nll"],
                before["brier"], after["brier"], record["n"])
    record["source_checkpoint"] = checkpoint
    served_predictions = Predictions(np.asarray(ids, np.int64),
                                     probabilities=calibration.scale(probabilities, temperature))
    return calibrated, record, served_predictions


def export_calibrated(engine, run, calibrated: str, record: dict) -> str:
    """The calibrated SavedModel: <checkpoint_dir>/export/calibrated/<version>/, reused when it was made from the
    same checkpoint with the same temperature; older calibrated exports are removed once the new one is in place."""
    root = os.path.join(run.config.checkpoint_dir, "export", FOLDER)
    mark = {"temperature": record["temperature"], "source_checkpoint": record["source_checkpoint"]}
    versions = sorted((v.rstrip("/") for v in tf.io.gfile.listdir(root) if v.rstrip("/").isdigit()), key=int) \
        if tf.io.gfile.isdir(root) else []
    for version in reversed(versions):
        path = os.path.join(root, version)
        if files.read_json(os.path.join(path, RECORD)) == mark and \
                tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return path
    path = engine.export(run, calibrated, root)
    files.write_json(os.path.join(path, RECORD), mark)
    for version in versions:
        if os.path.join(root, version) != path:
            tf.io.gfile.rmtree(os.path.join(root, version))
    return path


def _write_bundle(prefix: str, tensors: dict) -> str:
    """A name-keyed checkpoint, written to a temporary prefix and renamed into place (a kill leaves the old one)."""
    tf.io.gfile.makedirs(os.path.dirname(prefix))
    temporary = f"{prefix}.tmp"
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=temporary, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(np.asarray(tensors[n])) for n in names])
    for suffix in (".index", ".data-00000-of-00001"):
        tf.io.gfile.rename(temporary + suffix, prefix + suffix, overwrite=True)
    return prefix
