"""A trained run's keras_model.h5, loaded from any filesystem, and written so that both runtimes read it.

The two runtimes (TensorFlow 2.15's Keras 2.15, TensorFlow 2.21's tf-keras 2.21) write the same .h5 layout, but a
newer Keras adds keys to some layers' configs (tf-keras 2.21: `optional` on InputLayer), which an older Keras
refuses (`Error when deserializing class 'InputLayer' ...`). So:

- `neutralize` (on save) drops from the model_config the keys of `NEW_KEYS` that hold their default value, so a
  file written on TensorFlow 2.21 reads on TensorFlow 2.15 as it is;
- `load_keras` (on load), when this Keras refuses a file's model_config, loads a copy whose config keeps only
  the keys this Keras' layer classes accept (a file written before `neutralize`, or by other tools).
"""
import inspect
import json
import os
import shutil
import tempfile
from typing import Optional, Tuple

import tensorflow as tf

# Keys a newer Keras writes into an object's config, with the value that means "as an older Keras does".
NEW_KEYS = {"InputLayer": {"optional": False}}


def load_keras(path) -> tf.keras.Model:
    """Loads a keras_model.h5 (from any filesystem) as new, uncompiled Keras objects (a Model passes through)."""
    if isinstance(path, tf.keras.Model):
        return path
    if "://" in path:  # h5py reads local files only.
        local = os.path.join(tempfile.mkdtemp(), "keras_model.h5")
        tf.io.gfile.copy(path, local, overwrite=True)
        path = local
    return load_model(path)


def load_model(path: str, **kwargs) -> tf.keras.Model:
    """tf.keras.models.load_model(path, compile=False, **kwargs); an .h5 whose model_config holds keys this Keras
    does not know (written by a newer Keras) is loaded from a copy without them. Any other failure: as raised."""
    try:
        return tf.keras.models.load_model(path, compile=False, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised below unless a sanitized config loads.
        config = read_model_config(path)
        if config is None:
            raise
        cleaned, dropped = sanitized(config)
        if not dropped:
            raise
        workdir = tempfile.mkdtemp(prefix="keras_h5-")
        try:
            copy = os.path.join(workdir, os.path.basename(path) or "keras_model.h5")
            shutil.copyfile(path, copy)
            _write_model_config(copy, cleaned)
            try:
                return tf.keras.models.load_model(copy, compile=False, **kwargs)
            except Exception:  # noqa: BLE001 - the original error says more than the retry's.
                raise error from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def read_model_config(path: str) -> Optional[dict]:
    """The model_config of a local .h5 file (a dict); None when it is no readable HDF5 file or has none."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except Exception:  # noqa: BLE001 - not HDF5, truncated, missing, a folder.
        return None
    if raw is None:
        return None
    try:
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    return config if isinstance(config, dict) else None


def file_versions(path: str) -> dict:
    """The `keras_version` and `backend` attributes an .h5 file was written with ({} when unreadable)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            found = {k: f.attrs.get(k) for k in ("keras_version", "backend")}
    except Exception:  # noqa: BLE001
        return {}
    return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in found.items() if v is not None}


def sanitized(config: dict) -> Tuple[dict, list]:
    """(a copy of a model_config without the keys this Keras' classes would refuse, ["Class.key", ...] dropped).

    Checked: each object ({"class_name", "config"}) whose class is a built-in layer or initializer of this Keras
    deserialized by its base `from_config` (the class called with the config as keyword arguments): a key that
    is neither an argument of its `__init__` (along the classes that pass **kwargs on) nor a keyword the base
    Layer accepts is dropped. Classes with their own `from_config` (Functional models, Lambda) are left as they
    are, except for the keys of NEW_KEYS."""
    dropped = []

    def clean(node):
        if isinstance(node, list):
            return [clean(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: clean(v) for k, v in node.items()}
        name, inner = out.get("class_name"), out.get("config")
        if isinstance(name, str) and isinstance(inner, dict):
            accepted = _accepted_keys(name)
            for key in list(inner):
                refused = key not in accepted if accepted is not None else (
                    key in NEW_KEYS.get(name, {}) and not _knows(name, key))
                if refused:
                    del inner[key]
                    dropped.append(f"{name}.{key}")
        return out

    return clean(config), dropped


def _knows(class_name: str, key: str) -> bool:
    """Whether this Keras' class accepts `key` (for NEW_KEYS entries of classes not checked by signature)."""
    cls = getattr(tf.keras.layers, class_name, None)
    try:
        return cls is not None and key in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return True


_LAYER_KWARGS = {"input_dim", "input_shape", "batch_input_shape", "batch_size", "weights", "activity_regularizer",
                 "autocast", "implementation"}  # What keras' base Layer.__init__ accepts in **kwargs.


def _accepted_keys(class_name: str) -> Optional[set]:
    """The config keys the built-in class `class_name` accepts; None when unknown (not checked)."""
    layer = getattr(tf.keras.layers, class_name, None)
    if inspect.isclass(layer) and issubclass(layer, tf.keras.layers.Layer) and not issubclass(layer, tf.keras.Model):
        base = tf.keras.layers.Layer
        extra = _LAYER_KWARGS
        cls = layer
    else:
        cls = getattr(tf.keras.initializers, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, tf.keras.initializers.Initializer)):
            return None
        base, extra = tf.keras.initializers.Initializer, {"dtype"}  # Its from_config drops a stored dtype.
    if getattr(cls.from_config, "__func__", None) is not getattr(base.from_config, "__func__", None):
        return None  # Its own from_config may read keys its __init__ does not name.
    accepted = set(extra)
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        try:
            parameters = inspect.signature(klass.__init__).parameters.values()
        except (TypeError, ValueError):
            return None
        accepted.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break  # Nothing else reaches further up.
    accepted.discard("self")
    return accepted


def neutralize(path: str) -> list:
    """Rewrites a local .h5 file's model_config without the NEW_KEYS that hold their default value (a file any
    runtime of this package reads); returns the ["Class.key", ...] removed. Other files are left as they are."""
    config = read_model_config(path)
    if config is None:
        return []
    removed = []

    def strip(node):
        if isinstance(node, list):
            for v in node:
                strip(v)
        elif isinstance(node, dict):
            defaults = NEW_KEYS.get(node.get("class_name"))
            inner = node.get("config")
            if defaults and isinstance(inner, dict):
                for key, default in defaults.items():
                    if key in inner and inner[key] == default:
                        del inner[key]
                        removed.append(f"{node['class_name']}.{key}")
            for v in node.values():
                strip(v)

    strip(config)
    if removed:
        _write_model_config(path, config)
    return removed


def _write_model_config(path: str, config: dict) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")


def keras_version() -> str:
    """The Keras 2 that tf.keras is here: TensorFlow 2.15's bundled keras, or tf-keras (TF_USE_LEGACY_KERAS)."""
    from importlib import metadata

    for name in ("tf-keras", "keras") if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else ("keras", "tf-keras"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return getattr(tf.keras, "__version__", "unknown")
