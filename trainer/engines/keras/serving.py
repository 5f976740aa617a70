"""The Keras engine's SavedModel exports: `serving_default` with the Estimator engine's inputs and outputs
(`image_bytes`, a batch of JPEG/PNG strings, for folders and TFRecords, else the model's named float32 inputs;
`probabilities` and `classes`, the class names gathered from a constant), written under a temporary name and
renamed, with a name-keyed copy of the weights beside it (`keras_weights/`, read by keras_model.h5)."""
import os
import time
import uuid
from typing import Optional, Sequence

import tensorflow as tf

from trainer.data.inputs import decode_image
from trainer.engines.keras import saving
from trainer.outputs.export import CLASS_NAMES, EXPORT_WEIGHTS
from trainer.util import files



def make_signature(model: tf.keras.Model, class_names: Sequence[str], binary: bool, image_bytes: bool):
    """The `serving_default` concrete function of `model` (a single-output classifier: `probabilities` and
    `classes`; several outputs: each by its name)."""
    names = [str(n) for n in class_names]
    input_names = list(model.input_names)

    def outputs(probabilities):
        probabilities = tf.cast(probabilities, tf.float32)
        if binary:
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        classes = tf.gather(tf.constant(names), tf.argmax(probabilities, axis=-1))
        return {"probabilities": probabilities, "classes": classes}

    if image_bytes:
        size = model.input_shape[1]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve_bytes(image_bytes):
            images = tf.map_fn(lambda b: decode_image(b, size), image_bytes, fn_output_signature=tf.float32)
            return outputs(model({input_names[0]: images}, training=False))

        return serve_bytes.get_concrete_function()
    specs = {name: tf.TensorSpec([None, *t.shape[1:]], tf.float32, name=name)
             for name, t in zip(input_names, model.inputs)}
    output_names = list(model.output_names)

    @tf.function(input_signature=[specs])
    def serve(features):
        result = model(features, training=False)
        if len(output_names) == 1:
            return outputs(result)
        # Several outputs (a --model_fn): each under its name, as the Estimator engine exports them.
        values = result.values() if isinstance(result, dict) else result
        return {name: tf.cast(value, tf.float32) for name, value in zip(output_names, values)}

    return serve.get_concrete_function()


def export(model: tf.keras.Model, signature, root: str, keep: Optional[int] = None, class_names=None) -> str:
    """Writes `root/<unix time>/` (saved_model.pb, variables/, keras_weights/, assets.extra/class_names.json);
    keeps the newest `keep`."""
    tf.io.gfile.makedirs(root)
    version = int(time.time())
    while tf.io.gfile.exists(os.path.join(root, str(version))):
        version += 1
    # Unique: a chief and an evaluator may export in the same second (each their own temporary folder).
    temporary = os.path.join(root, f"temp-{version}-{uuid.uuid4().hex[:8]}")
    holder = tf.Module()
    holder.weights = list(model.variables)  # The signature's variables, tracked without Keras's own tracing.
    tf.saved_model.save(holder, temporary, signatures={"serving_default": signature})
    saving.write_bundle(os.path.join(temporary, EXPORT_WEIGHTS), {**saving.model_variables(model),
                                                           "global_step": tf.constant(0, tf.int64)})
    if class_names is not None and len(model.outputs) == 1:
        tf.io.gfile.makedirs(os.path.join(temporary, "assets.extra"))
        files.write_json(os.path.join(temporary, "assets.extra", CLASS_NAMES), [str(n) for n in class_names])
    path = os.path.join(root, str(version))
    while True:
        try:
            tf.io.gfile.rename(temporary, path)
            break
        except tf.errors.OpError:  # That version was taken meanwhile (another task): the next one.
            if not tf.io.gfile.exists(path):
                raise
            version += 1
            path = os.path.join(root, str(version))
    if keep:
        versions = sorted((v.rstrip("/") for v in tf.io.gfile.listdir(root) if v.rstrip("/").isdigit()), key=int)
        for old in versions[:-keep]:
            tf.io.gfile.rmtree(os.path.join(root, old))
    return path
