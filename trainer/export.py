"""Exports: the serving SavedModels (Estimator exporters) and keras_model.h5.

The Estimator trains a clone of the Keras model in its own graph; its
checkpoints (saver format) name variables exactly as the Keras layers name
their weights, so the trained model is recovered by assigning each checkpoint
tensor to the weight of the same name.
"""
import os
import tempfile
import uuid
import warnings
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from trainer.inputs import decode_image

EXPORTER_NAMES = {"best": "best", "latest": "latest", "final": "final"}


def make_serving_input_fn(input_shapes: Dict[str, tuple]):
    """A receiver that takes the model's named inputs as float32 batches."""

    def serving_input_fn():
        tensors = {name: tf.compat.v1.placeholder(tf.float32, [None, *shape], name=name)
                   for name, shape in input_shapes.items()}
        return tf.estimator.export.ServingInputReceiver(tensors, tensors)

    return serving_input_fn


def make_image_bytes_serving_input_fn(input_name: str, size: int):
    """A receiver for encoded images: `image_bytes`, a batch of JPEG/PNG strings.

    The name ends in `_bytes`, so TF Serving (and Vertex AI prediction) accepts
    `{"instances": [{"image_bytes": {"b64": "..."}}]}` and decodes the base64 itself.
    Decoding and resizing are the training pipeline's own (`inputs.decode_image`).
    """

    def serving_input_fn():
        encoded = tf.compat.v1.placeholder(tf.string, [None], name="image_bytes")
        images = tf.map_fn(lambda b: decode_image(b, size), encoded, fn_output_signature=tf.float32)
        return tf.estimator.export.ServingInputReceiver({input_name: images}, {"image_bytes": encoded})

    return serving_input_fn


def with_class_names(model_fn, class_names: Sequence[str], binary: bool):
    """Wraps a single-output classifier's model_fn so predictions carry class names.

    Predictions (and the serving signature) become `probabilities` [batch, classes] and
    `classes` (the most likely class name); a binary sigmoid unit p becomes [1 - p, p].
    """
    names = list(class_names)

    def wrapped(features, labels, mode, config):
        spec = model_fn(features, labels, mode, config)
        if mode != tf.estimator.ModeKeys.PREDICT:
            return spec
        (probabilities,) = spec.predictions.values()
        if binary:
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        classes = tf.gather(tf.constant(names), tf.argmax(probabilities, axis=-1))
        predictions = {"probabilities": probabilities, "classes": classes}
        key = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
        return spec._replace(predictions=predictions,
                             export_outputs={key: tf.estimator.export.PredictOutput(predictions)})

    return wrapped


def _higher_accuracy(best_eval_result, current_eval_result) -> bool:
    if "accuracy" in current_eval_result:
        return best_eval_result is None or current_eval_result["accuracy"] > best_eval_result["accuracy"]
    return best_eval_result is None or current_eval_result["loss"] < best_eval_result["loss"]


def make_exporters(kind: str, serving_input_fn, keep: int) -> List[tf.estimator.Exporter]:
    """The exporter for --export: best (on accuracy), latest, or final."""
    if kind == "best":
        return [tf.estimator.BestExporter(name="best", serving_input_receiver_fn=serving_input_fn,
                                          compare_fn=_higher_accuracy, exports_to_keep=keep)]
    if kind == "latest":
        return [tf.estimator.LatestExporter(name="latest", serving_input_receiver_fn=serving_input_fn,
                                            exports_to_keep=keep)]
    return [tf.estimator.FinalExporter(name="final", serving_input_receiver_fn=serving_input_fn)]


def latest_export(model_dir: str, kind: str) -> Optional[str]:
    """The newest export/<kind>/<version> folder with a saved_model.pb, if any."""
    root = os.path.join(model_dir, "export", kind)
    if not tf.io.gfile.isdir(root):
        return None
    versions = sorted((v.rstrip("/") for v in tf.io.gfile.listdir(root) if v.rstrip("/").isdigit()), key=int)
    for version in reversed(versions):
        path = os.path.join(root, version)
        if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            return path
    return None


def save_weights_checkpoint(model: tf.keras.Model, path: str) -> str:
    """Saves the model's weights as a name-keyed (saver format) checkpoint at `path`.

    A `global_step` of 0 goes with them, as in model_to_estimator's own first checkpoint:
    an Estimator exporting straight from its warm-start checkpoint restores it.
    """
    tf.io.gfile.makedirs(os.path.dirname(path))
    variables = {w.name.split(":")[0]: w for w in model.weights}
    variables["global_step"] = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    saver = tf.compat.v1.train.Saver(var_list=variables)
    return saver.save(None, path, write_meta_graph=False)


def restore_from_checkpoint(model: tf.keras.Model, checkpoint: str) -> None:
    """Assigns the weights of `model` from an Estimator checkpoint (saver format).

    Raises:
        ValueError: a weight of the model has no tensor of the same name and shape.
    """
    reader = tf.train.load_checkpoint(checkpoint)
    shapes = reader.get_variable_to_shape_map()
    values = []
    for weight in model.weights:
        name = weight.name.split(":")[0]
        if name not in shapes or tuple(shapes[name]) != tuple(weight.shape):
            raise ValueError(f"checkpoint {checkpoint} has no tensor {name} of shape {tuple(weight.shape)}")
        values.append((weight, reader.get_tensor(name)))
    tf.keras.backend.batch_set_value(values)  # Works in eager and graph mode alike.


def save_keras_model(model: tf.keras.Model, checkpoint: str, path: str,
                     full_model: Optional[tf.keras.Model] = None) -> None:
    """Writes `model` with the checkpoint's weights to `path` (.h5), atomically.

    With `full_model`, the checkpoint restores `model` (a part sharing its layers) and
    `full_model` is what is written.
    """
    # .h5 on purpose: it is what --base_model users and older tools load everywhere.
    warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\(\)`.*")
    restore_from_checkpoint(model, checkpoint)
    model = full_model or model
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}.h5"
    if "://" in path:  # h5py writes local files only: stage it, then copy.
        with tempfile.TemporaryDirectory() as local:
            staged = os.path.join(local, "keras_model.h5")
            model.save(staged, include_optimizer=False, save_format="h5")
            tf.io.gfile.copy(staged, tmp, overwrite=True)
    else:
        model.save(tmp, include_optimizer=False, save_format="h5")
    tf.io.gfile.rename(tmp, path, overwrite=True)
