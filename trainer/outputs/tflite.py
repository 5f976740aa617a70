"""TensorFlow Lite export of a trained run (the CLI, with what it writes: trainer.export_tflite)."""
import dataclasses
import hashlib
import json
import os
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from trainer.data import sources as data_lib  # noqa: E402
from trainer.util import files  # noqa: E402
from trainer.data import inputs
from trainer.config import Config  # noqa: E402
from trainer.errors import UsageError  # noqa: E402

from trainer.config import TFLITE_CALIBRATION_EXAMPLES as CALIBRATION_EXAMPLES  # noqa: E402
from trainer.config import TFLITE_CHECK_EXAMPLES as CHECK_EXAMPLES  # noqa: E402
from trainer.config import TFLITE_MODES  # noqa: E402

MODES = TFLITE_MODES[1:]
_SEED = 1234


def tflite_dir(model_dir: str) -> str:
    return os.path.join(model_dir, "export", "tflite")


def export(model_dir: str, quantize: str, data: Optional[str] = None,
           calibration_examples: int = CALIBRATION_EXAMPLES, check_examples: int = CHECK_EXAMPLES) -> dict:
    """Converts the run in `model_dir` and writes export/tflite/; returns model_info.json's content.

    Args:
        model_dir: a finished run (keras_model.h5 and run_info.json).
        quantize: float32, float16 or int8.
        data: the training data, when it is no longer where run_info.json says.
        calibration_examples: training images the int8 ranges are calibrated on.
        check_examples: evaluation images the agreement with the Keras model is measured on (0: none).

    Raises:
        UsageError: a bad mode, a model_dir without a trained model, data that cannot be found.
    """
    if quantize not in MODES:
        raise UsageError(f"--quantize={quantize} is not valid; choose one of: {', '.join(MODES)}")
    from trainer.model.keras_files import load_keras

    keras_path = os.path.join(model_dir, "keras_model.h5")
    run_info = files.read_json(os.path.join(model_dir, "run_info.json"))
    if run_info is None or not tf.io.gfile.exists(keras_path):
        raise UsageError(f"{model_dir} holds no finished run (keras_model.h5 and run_info.json); train it first")
    model = load_keras(keras_path)
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.input_shape) != 4:
        raise UsageError(f"{model_dir}: TFLite export takes a model with one image input and one output "
                         f"(this one has inputs {model.input_names} and outputs {model.output_names})")
    if model.input_shape[-1] != 3:  # The calibration and agreement images are decoded RGB pixels.
        shape = "x".join(str(d) for d in model.input_shape[1:])
        raise UsageError(f"{model_dir}: TFLite export takes a model of RGB images (HxWx3); this one's input is "
                         f"{shape} (a --model_fn model?): convert it yourself with tf.lite.TFLiteConverter")
    weights = _use_serving_weights(model, model_dir, run_info)
    class_names = list(run_info.get("class_names") or [])
    if model.output_shape[-1] == 1 and len(class_names) == 2:  # Binary sigmoid -> [1 - p, p], like serving.
        p = model.output
        # Its own name: the sigmoid layer is already called `probabilities` (trial c137/c138).
        model = tf.keras.Model(model.input, tf.keras.layers.Concatenate(name="class_probabilities")([1.0 - p, p]))
    dataset = _dataset(run_info, data, needed=quantize == "int8")
    size = int(model.input_shape[1])
    tmp_files = tf.io.gfile.glob(os.path.join(tflite_dir(model_dir), "*.tmp-*"))
    for leftover in tmp_files:  # From a killed export.
        tf.io.gfile.remove(leftover)

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    calibration = 0
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        images = _images(model, dataset.train, size, calibration_examples, dataset.class_names)
        calibration = len(images)
        # One pixel at 0 and one at 255 make the calibrated input range [0, 255]: the input's
        # quantization is then the identity (scale 1, zero point 0) and decoded uint8 pixels go in as they are.
        images[0, 0, 0], images[0, 0, 1] = 0.0, 255.0
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    logging.info("tflite: converting %s (%s%s)", keras_path, quantize,
                 f", calibrated on {calibration} training images" if calibration else "")
    flatbuffer = converter.convert()

    info = _describe(flatbuffer, quantize, size, class_names, keras_path, calibration)
    info["weights"] = weights
    if dataset is not None and check_examples:
        images = _images(model, dataset.validation, size, check_examples, dataset.class_names)
        info["agreement_with_keras_model"] = {
            "examples": len(images), "top1": agreement(flatbuffer, model, images), "split": "validation"}
        logging.info("tflite: top-1 agreement with the Keras model %.4f on %d validation images",
                     info["agreement_with_keras_model"]["top1"], len(images))
    out = tflite_dir(model_dir)
    tf.io.gfile.makedirs(out)
    _write(os.path.join(out, "model.tflite"), flatbuffer)
    _write(os.path.join(out, "labels.txt"), "".join(f"{name}\n" for name in class_names).encode())
    _write(os.path.join(out, "model_info.json"), (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    logging.info("tflite: wrote %s (%d bytes)", os.path.join(out, "model.tflite"), len(flatbuffer))
    return info


def _use_serving_weights(model: tf.keras.Model, model_dir: str, run_info: dict) -> str:
    """Loads the weights of the run's serving SavedModel into `model`; returns where the weights came from.

    keras_model.h5 holds the final checkpoint, while --export=best exports the best evaluation's
    checkpoint, which can be an earlier one; the .tflite must match what is served (the calibrated export when
    the run calibrated). The SavedModel's
    variables carry the Keras weight names (as the Estimator's checkpoints do).
    """
    from trainer.outputs import export

    from trainer.config import served_export_kinds

    # A calibrated run serves export/calibrated/ (trainer.stages.calibrate): its weights hold the temperature.
    for kind in served_export_kinds(run_info.get("flags", {})):
        saved_model = export.latest_export(model_dir, kind)
        if saved_model:
            try:
                export.restore_from_checkpoint(model, export.export_weights(saved_model))
                return saved_model
            except (ValueError, tf.errors.OpError) as e:
                logging.warning("tflite: keeping keras_model.h5's weights, %s does not match it (%s)",
                                saved_model, str(e)[:200])
            break
    return os.path.join(model_dir, "keras_model.h5")


def _dataset(run_info: dict, data: Optional[str], needed: bool):
    """The run's data (as run_info.json records it, or --data), for calibration and the agreement check."""
    flags = run_info.get("flags", {})
    source = data or flags.get("data")
    config = Config(data=source, eval_data=None if data else flags.get("eval_data"),
                    labels_file=flags.get("labels_file"), classes=tuple(flags.get("classes") or ()),
                    validation_split=flags.get("validation_split", 0.2),
                    max_bad_fraction=flags.get("max_bad_fraction", 1.0))
    try:
        if not source:
            raise UsageError("run_info.json names no --data")
        dataset = data_lib.load(config)
    except UsageError as e:
        if needed:
            raise UsageError(f"--quantize=int8 calibrates on the run's training data, which cannot be read "
                             f"({e}); pass --data=<where it is now>") from None
        logging.warning("tflite: no agreement check, the run's data cannot be read (%s)", e)
        return None
    if dataset.class_names != list(run_info.get("class_names") or dataset.class_names):
        raise UsageError(f"--data={source} has classes {dataset.class_names}, the model "
                         f"{run_info.get('class_names')}")
    return dataset


def _images(model: tf.keras.Model, split: data_lib.Split, size: int, count: int, class_names) -> np.ndarray:
    """Up to `count` images of `split` (a seeded sample), through the evaluation input pipeline."""
    if split.known_size and len(split) > count:
        keep = np.sort(np.random.default_rng(_SEED).choice(len(split), count, replace=False))
        split = dataclasses.replace(
            split, labels=split.labels[keep],
            x={k: v[keep] for k, v in split.x.items()} if split.x is not None else None,
            y={k: v[keep] for k, v in split.y.items()} if split.y is not None else None,
            paths=[split.paths[i] for i in keep] if split.paths is not None else None)
    input_fn = inputs.make_input_fn(
        split, training=False, batch_size=32, input_names=model.input_names,
        output_names=model.output_names, label_mode="sparse", num_classes=len(class_names), image_size=size,
        class_names=class_names)
    ds = input_fn().unbatch().map(lambda features, labels: features[model.input_names[0]])
    if not split.known_size:  # TFRecords: records in file order; mix them before taking a sample.
        ds = ds.shuffle(4 * count, seed=_SEED)
    return np.stack(list(ds.take(count).as_numpy_iterator())).astype(np.float32)


class Runner:
    """A TFLite interpreter for one image at a time, quantizing input and output as the model says."""

    def __init__(self, flatbuffer: bytes):
        self.interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Float pixels [size, size, 3] in [0, 255] -> float probabilities."""
        x = image[None].astype(np.float32)
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero_point = self.output["quantization"]
        return (y.astype(np.float32) - zero_point) * scale if self.output["dtype"] != np.float32 else y


def agreement(flatbuffer: bytes, model: tf.keras.Model, images: np.ndarray) -> float:
    """Fraction of `images` whose top-1 class is the same from the TFLite model and from `model`."""
    runner = Runner(flatbuffer)
    reference = model.predict(images, batch_size=64, verbose=0).argmax(-1)
    lite = np.array([runner(image).argmax() for image in images])
    return float(np.mean(reference == lite))


def _describe(flatbuffer: bytes, quantize: str, size: int, class_names, source: str, calibration: int) -> dict:
    runner = Runner(flatbuffer)

    def tensor(details: dict, meaning: str, value_range) -> dict:
        scale, zero_point = details["quantization"]
        return {"name": details["name"], "shape": [int(d) for d in details["shape"]],
                "dtype": np.dtype(details["dtype"]).name, "range": value_range, "meaning": meaning,
                "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None}

    uint8 = runner.input["dtype"] == np.uint8
    return {
        "quantize": quantize, "file": "model.tflite", "bytes": len(flatbuffer),
        "sha256": hashlib.sha256(flatbuffer).hexdigest(), "labels": "labels.txt", "num_classes": len(class_names),
        "image_size": size, "source": source, "calibration_examples": calibration, "tf_version": tf.__version__,
        "input": tensor(runner.input, f"RGB pixels of one image resized to {size}x{size} (bilinear); the "
                        "backbone's preprocessing is inside the model" + (
                            "; quantized: q = round(pixel / scale + zero_point)" if uint8 else ""),
                        [0, 255]),
        "output": tensor(runner.output, "class probabilities in labels.txt order" + (
            "; dequantized: p = (q - zero_point) * scale" if uint8 else ""), [0, 255] if uint8 else [0.0, 1.0]),
    }


def _write(path: str, content: bytes) -> None:
    from trainer.util import files

    files.write_atomic(path, content)
