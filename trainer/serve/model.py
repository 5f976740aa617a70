"""The served model: a trainer export's `serving_default` signature, and the checks that turn a request's instances
into its inputs (every mistake a `BadRequest` naming the instance and what is wrong) and its outputs into
predictions.

Instances, for an export of either engine:
- image models (a string input, the SavedModel decodes): `{"b64": "<base64 JPEG/PNG/GIF/BMP>"}`, or the same under
  the input's name (`{"image_bytes": {"b64": ...}}`, the prebuilt TensorFlow containers' form);
- float-input models (trained on arrays): the pixels as nested lists of the input's shape, bare or under the input's
  name; `{"b64": ...}` works for them too, decoded and resized as `trainer.predict` decodes files;
- several inputs: one object with every input's name.

Each prediction: `classes` (the most probable class's name), `probabilities` (one per class, in the order of
`class_names`), `top_k` ([[name, probability], ...]) when `parameters.top_k` is given, and any other output of the
signature by its name.
"""
import base64
import binascii
from typing import Dict, List, Sequence, Tuple

import numpy as np

PARAMETERS = ("top_k",)
# The magic numbers tf.io.decode_image accepts: a request whose bytes are none of them is refused before the model.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class BadRequest(Exception):
    """A request the model cannot answer, for a reason the caller can fix (answered 400 with the message)."""


class ServedModel:
    """Loads a local SavedModel folder; `inputs`, `run` and `predictions` serve it."""

    def __init__(self, saved_model_dir: str):
        import tensorflow as tf

        from trainer.outputs.batch_predict import class_names_of

        self._tf = tf
        self.path = saved_model_dir
        self._loaded = tf.saved_model.load(saved_model_dir)  # Kept: the signature needs its object graph.
        self.fn = self._loaded.signatures["serving_default"]
        self.specs = dict(self.fn.structured_input_signature[1])
        outputs = self.fn.structured_outputs
        if "probabilities" not in outputs:
            raise ValueError(f"its serving_default returns {sorted(outputs)}, without `probabilities`")
        self.output_names = [n for n in sorted(outputs) if n != "classes"]
        self.num_classes = int(outputs["probabilities"].shape[-1])
        self.class_names = class_names_of(self.fn, saved_model_dir, self.num_classes)

    # ---- requests -> inputs -------------------------------------------------------------------------------------

    def inputs(self, instances: Sequence) -> Dict[str, object]:
        """The signature's inputs for a list of instances: {name: list of bytes, or a float32 array}.

        Raises:
            BadRequest: naming the first instance at fault.
        """
        columns = {name: [] for name in self.specs}
        for i, instance in enumerate(instances):
            for name, value in self._split(i, instance).items():
                columns[name].append(self._value(i, name, value))
        try:
            return {name: values if self._takes_bytes(name) else np.stack(values) for name, values in columns.items()}
        except ValueError:
            raise BadRequest("the instances have different shapes; give them one shape") from None

    def _split(self, i: int, instance) -> Dict[str, object]:
        names = list(self.specs)
        if isinstance(instance, dict) and set(instance) & set(names):
            missing = [n for n in names if n not in instance]
            extra = sorted(set(instance) - set(names))
            if missing or extra:
                raise BadRequest(f"instance {i}: " + (f"missing input {', '.join(map(repr, missing))}" if missing else
                                                      f"unknown key {', '.join(map(repr, extra))}") +
                                 f" (the model's inputs: {', '.join(names)})")
            return {n: instance[n] for n in names}
        if len(names) > 1:
            raise BadRequest(f"instance {i}: this model has {len(names)} inputs; give an object with "
                             f"{', '.join(map(repr, names))}")
        return {names[0]: instance}

    def _takes_bytes(self, name: str) -> bool:
        return self.specs[name].dtype == self._tf.string

    def _value(self, i: int, name: str, value):
        where = f"instance {i}" + (f", input {name!r}" if len(self.specs) > 1 else "")
        if value is None:
            raise BadRequest(f"{where} is null")
        if isinstance(value, dict):
            if set(value) != {"b64"}:
                raise BadRequest(f"{where}: an object must be {{\"b64\": \"...\"}}; got keys {sorted(value)}")
            data = _b64(where, value["b64"])
            if self._takes_bytes(name):
                return data
            return self._decoded(where, name, data)
        if self._takes_bytes(name):
            raise BadRequest(f"{where}: this model takes encoded images: give {{\"b64\": \"<base64 JPEG or PNG>\"}}")
        return self._floats(where, name, value)

    def _decoded(self, where: str, name: str, data: bytes) -> np.ndarray:
        """Image bytes for a float-input model: trainer.predict's decoding (decode_image at the input's size)."""
        from trainer.data.inputs import decode_image

        shape = self.specs[name].shape
        if shape.rank != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
            raise BadRequest(f"{where}: input {name!r} takes floats of shape {_shape(shape)}, not an image")
        try:
            return decode_image(data, int(shape[1])).numpy()
        except self._tf.errors.InvalidArgumentError as e:
            from trainer.outputs.batch_predict import error_text

            raise BadRequest(f"{where}: the image does not decode ({error_text(e).split(': ', 1)[-1]})") from None

    def _floats(self, where: str, name: str, value) -> np.ndarray:
        spec = self.specs[name]
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError, OverflowError, RecursionError):
            raise BadRequest(f"{where}: input {name!r} takes numbers of shape {_shape(spec.shape)}; got "
                             f"{_kind(value)}") from None
        want = spec.shape[1:]
        if array.ndim != len(want) or any(w is not None and w != a for w, a in zip(want, array.shape)):
            raise BadRequest(f"{where}: input {name!r} takes shape {_shape(spec.shape)}; got "
                             f"{list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise BadRequest(f"{where}: input {name!r} has NaN or infinite values")
        return array

    # ---- inputs -> outputs -> predictions -----------------------------------------------------------------------

    def run(self, inputs: Dict[str, object]) -> Dict[str, np.ndarray]:
        """Calls the signature; raises tf.errors.InvalidArgumentError when the graph refuses an input."""
        tf = self._tf
        feed = {n: tf.constant(v, tf.string) if self._takes_bytes(n) else tf.constant(v) for n, v in inputs.items()}
        out = self.fn(**feed)
        return {n: out[n].numpy() for n in self.output_names}

    def why_refused(self, inputs: Dict[str, object], error: Exception) -> str:
        """Why the signature refused one instance (`inputs` of one): its image does not decode, or the graph's own
        first line."""
        from trainer.outputs.batch_predict import decode_error, error_text

        for name, values in inputs.items():
            problem = decode_error(values[0]) if self._takes_bytes(name) else None
            if problem:
                return f"the image does not decode ({problem.split(': ', 1)[-1]})"
        return f"the model refused it ({error_text(error)})"

    def predictions(self, outputs: Dict[str, np.ndarray], top_k: int = 0) -> List[dict]:
        names = self.class_names
        rows = []
        for row in range(len(outputs["probabilities"])):
            probabilities = outputs["probabilities"][row]
            best = int(np.argmax(probabilities))
            prediction = {"classes": names[best], "probabilities": [float(p) for p in probabilities]}
            if top_k:
                order = np.argsort(-probabilities, kind="stable")[:top_k]
                prediction["top_k"] = [[names[j], float(probabilities[j])] for j in order]
            for name in self.output_names:
                if name != "probabilities":
                    prediction[name] = outputs[name][row].tolist()
            rows.append(prediction)
        return rows

    def warm_up_instance(self):
        """One valid instance (a small PNG, or zeros), for the request the server answers before it is ready."""
        tf = self._tf
        instance = {}
        for name, spec in self.specs.items():
            if self._takes_bytes(name):
                png = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()
                instance[name] = {"b64": base64.b64encode(png).decode()}
            else:
                instance[name] = np.zeros([d or 1 for d in spec.shape[1:]], np.float32).tolist()
        return instance

    def parameters(self, parameters) -> Tuple[int]:
        """(top_k,) from a request's `parameters`."""
        if parameters is None:
            return (0,)
        if not isinstance(parameters, dict):
            raise BadRequest(f"`parameters` must be an object, not {_kind(parameters)}")
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise BadRequest(f"unknown parameter {', '.join(map(repr, unknown))} (known: {', '.join(PARAMETERS)})")
        top_k = parameters.get("top_k", 0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= self.num_classes:
            raise BadRequest(f"parameters.top_k={top_k!r} must be an integer from 0 (none) to {self.num_classes} "
                             "(the model's classes)")
        return (top_k,)


def parse_json(body: bytes):
    """A request's body as JSON; BadRequest when it is not."""
    import json

    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON ({e})") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply") from None


def _b64(where: str, text) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where}: \"b64\" must be a string, not {_kind(text)}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: \"b64\" is not base64") from None
    if not data.startswith(_IMAGE_MAGIC):
        raise BadRequest(f"{where}: the b64 bytes are not a JPEG, PNG, GIF or BMP image")
    return data


def _shape(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _kind(value) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list with non-numbers or rows of different lengths"
    return type(value).__name__


def local_model(uri: str) -> str:
    """A local SavedModel folder for an export, model_dir or champion folder, local or gs:// (downloaded once)."""
    from trainer.model import model_source

    return model_source.resolve(uri, flag="export")

