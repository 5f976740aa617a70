"""Serving input receivers of the Estimator's SavedModel exports (image bytes, or arrays), and the class names
in its predictions."""
from typing import Dict, Sequence

import tensorflow as tf

from trainer.data.inputs import decode_image


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
