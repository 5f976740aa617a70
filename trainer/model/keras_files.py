"""A trained run's keras_model.h5, loaded from any filesystem."""
import os
import tempfile

import tensorflow as tf


def load_keras(path) -> tf.keras.Model:
    """Loads a keras_model.h5 (from any filesystem) as new, uncompiled Keras objects (a Model passes through)."""
    if isinstance(path, tf.keras.Model):
        return path
    if "://" in path:  # h5py reads local files only.
        local = os.path.join(tempfile.mkdtemp(), "keras_model.h5")
        tf.io.gfile.copy(path, local, overwrite=True)
        path = local
    return tf.keras.models.load_model(path, compile=False)
