"""The trunks a model is built on: the backbone registry (Keras applications and two small test models), their
preprocessing (built-in layers only, so keras_model.h5 loads with plain load_model), a saved Keras model's
front (`--base_model`), and a cut at a named layer (`--cut_layer`). A new backbone goes into BACKBONES."""
import dataclasses
import difflib
import os
import re
from typing import Callable, Dict, Optional

import tensorflow as tf

from trainer.cloud import gcs
from trainer.config import Config
from trainer.errors import UsageError


# Per-channel constants of keras.applications' preprocess_input modes.
_CAFFE_BGR_MEAN = [-103.939, -116.779, -123.68]
_TORCH_MEAN = [0.485, 0.456, 0.406]
_TORCH_STD = [0.229, 0.224, 0.225]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A registry entry: how to build a trunk and feed it pixels in [0, 255]."""

    build: Callable[[tuple, Optional[str]], tf.keras.Model]
    preprocess: str  # "tf" ([-1, 1]), "caffe" (BGR, mean-centred), "torch", "unit" ([0, 1]), "none".
    default_size: int
    pretrained: bool = True


def _app(fn) -> Callable:
    return lambda shape, weights: fn(include_top=False, weights=weights, input_shape=shape)


def _small_cnn(shape, weights) -> tf.keras.Model:
    inputs = tf.keras.Input(shape, name="small_cnn_input")
    x = inputs
    for i, filters in enumerate((32, 64), start=1):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = tf.keras.layers.ReLU(name=f"relu{i}")(x)
        x = tf.keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    return _with_weights(tf.keras.Model(inputs, x, name="small_cnn"), weights)


def _with_weights(model: tf.keras.Model, weights: Optional[str]) -> tf.keras.Model:
    if weights:  # A weights file (the small models have no 'imagenet').
        model.load_weights(weights)
    return model


def _mlp(shape, weights) -> tf.keras.Model:
    inputs = tf.keras.Input(shape, name="mlp_input")
    x = tf.keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate((128, 64), start=1):
        x = tf.keras.layers.Dense(units, activation="relu", name=f"fc{i}")(x)
    return _with_weights(tf.keras.Model(inputs, x, name="mlp"), weights)


apps = tf.keras.applications
BACKBONES: Dict[str, Backbone] = {
    "mlp": Backbone(_mlp, "unit", 32, pretrained=False),
    "small_cnn": Backbone(_small_cnn, "unit", 32, pretrained=False),
    "mobilenet_v2": Backbone(_app(apps.MobileNetV2), "tf", 224),
    "inception_v3": Backbone(_app(apps.InceptionV3), "tf", 299),
    "vgg16": Backbone(_app(apps.VGG16), "caffe", 224),
    "vgg19": Backbone(_app(apps.VGG19), "caffe", 224),
    "resnet50": Backbone(_app(apps.ResNet50), "caffe", 224),
    "xception": Backbone(_app(apps.Xception), "tf", 299),
    "densenet121": Backbone(_app(apps.DenseNet121), "torch", 224),
    "efficientnet_b0": Backbone(_app(apps.EfficientNetB0), "none", 224),  # Rescales inside.
}
del apps


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise UsageError(f"--backbone={name} is unknown; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def resolve_weights(config: Config) -> Optional[str]:
    """The weights to load into the backbone: 'imagenet', a file path, or None."""
    backbone = get_backbone(config.backbone)
    weights = config.weights or ("imagenet" if backbone.pretrained else "none")
    if weights == "none":
        return None
    if weights == "imagenet" and not backbone.pretrained:
        raise UsageError(f"--backbone={config.backbone} has no pretrained weights; use --weights=none "
                         "or a weights file")
    if weights != "imagenet":
        weights = gcs.localize(weights, "weights")
        if not tf.io.gfile.exists(weights):
            raise UsageError(f"--weights={weights} does not exist (use imagenet, none or a weights file)")
    return weights


def image_size(config: Config, data_image_shape: Optional[tuple] = None) -> int:
    """--image_size, else the data's own size for the small models, else the backbone's."""
    if config.image_size:
        return config.image_size
    backbone = get_backbone(config.backbone)
    if not backbone.pretrained and data_image_shape is not None:
        return int(data_image_shape[0])
    return backbone.default_size


def preprocessing_of(x, mode: str):
    """Maps pixels in [0, 255] to what a backbone expects, with zero-parameter layers."""
    if mode == "tf":
        return tf.keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(x)
    if mode == "unit":
        return tf.keras.layers.Rescaling(1 / 255.0, name="preprocess")(x)
    if mode == "caffe":
        x = tf.reverse(x, axis=[-1])  # RGB -> BGR, as a serialisable TF-op layer.
        return tf.keras.layers.Rescaling(1.0, offset=_CAFFE_BGR_MEAN, name="preprocess")(x)
    if mode == "torch":
        scale = [1 / (255.0 * s) for s in _TORCH_STD]
        offset = [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
        return tf.keras.layers.Rescaling(scale, offset=offset, name="preprocess")(x)
    return x


def build_trunk(config: Config, size: int) -> tf.keras.Model:
    """The pretrained (or base-model) part, before freezing."""
    if config.base_model:
        return _trunk_from_base_model(config)
    backbone = get_backbone(config.backbone)
    weights = resolve_weights(config)
    try:
        trunk = backbone.build((size, size, 3), weights)
    except Exception as e:  # Download failures surface as many exception types.
        if weights == "imagenet":
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""  # New-user c001: `(Exception)`.
            raise UsageError(f"--weights=imagenet: could not get the ImageNet weights of {config.backbone} "
                             f"({type(e).__name__}{': ' + first if first else ''}); pass --weights=<path to a "
                             "weights file> or --weights=none") from None
        if weights:
            raise UsageError(f"--weights={weights} could not be loaded into {config.backbone}: {e}") from None
        raise UsageError(f"--image_size={size} does not suit --backbone={config.backbone}: {e}") from None
    if config.cut_layer:
        trunk = cut(trunk, config.cut_layer, f"--backbone={config.backbone}")
    return trunk


def cut(model: tf.keras.Model, layer_name: str, what: str) -> tf.keras.Model:
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        close = difflib.get_close_matches(layer_name, names, n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UsageError(f"--cut_layer={layer_name} is not a layer of {what}{hint} "
                         f"(--dry_run lists all {len(names)} layers in model_summary.json)")
    return tf.keras.Model(model.input, model.get_layer(layer_name).output, name=model.name)


def _code_carrying_layers(path: str) -> list:
    """Layers of a saved model whose loading would run Python code stored in the file (Lambda)."""
    if path.endswith((".h5", ".hdf5")):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                config = f.attrs.get("model_config", "")
        except OSError:
            return []  # Not HDF5: load_model reports it.
        config = config.decode() if isinstance(config, bytes) else str(config)
    elif tf.io.gfile.isdir(path):
        metadata = os.path.join(path, "keras_metadata.pb")
        if not tf.io.gfile.exists(metadata):
            return []
        config = tf.io.gfile.GFile(metadata, "rb").read().decode("utf-8", "replace")
    else:
        return []  # .keras files are checked by Keras' own safe_mode.
    return sorted(set(re.findall(r'"class_name": "(Lambda)"', config)))


def load_base_model(path: str, allow_custom_objects: bool = False) -> tf.keras.Model:
    """Loads --base_model without running code stored in it, unless allowed.

    Lambda layers carry marshalled Python bytecode that runs when the model is used;
    they are refused unless --allow_custom_objects. Nothing here unpickles.
    """
    path = gcs.localize(path, "base_model")
    if not tf.io.gfile.exists(path):
        raise UsageError(f"--base_model={path} does not exist")
    unsafe = _code_carrying_layers(path)
    if unsafe and not allow_custom_objects:
        raise UsageError(f"--base_model={path} contains {', '.join(unsafe)} layers, which run Python code stored "
                         "in the file; pass --allow_custom_objects only if you trust it")
    from trainer.model import keras_files

    try:  # An .h5 written by a newer Keras (the other runtime) loads without the config keys this one lacks.
        if path.endswith(".keras"):
            return keras_files.load_model(path, safe_mode=not allow_custom_objects)
        return keras_files.load_model(path)
    except Exception as e:  # h5py, SavedModel and Keras each raise their own types.
        first = " ".join(str(e).split())  # One line, cut at a word.
        first = first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " ..."
        raise UsageError(f"--base_model={path} is not a loadable Keras model "
                         f"(.h5, .keras or SavedModel): {type(e).__name__}: {first}") from None


def _trunk_from_base_model(config: Config) -> tf.keras.Model:
    base = load_base_model(config.base_model, config.allow_custom_objects)
    if config.drop_layers >= len(base.layers) - 1:
        raise UsageError(f"--drop_layers={config.drop_layers} leaves nothing of --base_model: "
                         f"it has {len(base.layers)} layers")
    # A nested model's `.output` is its own inner tensor; its last call's output is the one in `base`.
    out = base.layers[-(config.drop_layers + 1)].get_output_at(-1)
    trunk = tf.keras.Model(base.inputs, out, name="base_trunk")
    if config.cut_layer:
        trunk = cut(trunk, config.cut_layer, f"--base_model={config.base_model}")
    return trunk
