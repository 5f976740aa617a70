"""A two-input, two-output functional model for the --model_fn tests."""
import tensorflow as tf


def build(num_classes: int) -> tf.keras.Model:
    pixels = tf.keras.Input((8, 8, 1), name="pixels")
    stats = tf.keras.Input((2,), name="stats")
    x = tf.keras.layers.Flatten(name="flat")(pixels)
    x = tf.keras.layers.Concatenate(name="merge")([x, stats])
    x = tf.keras.layers.Dense(32, activation="relu", name="shared")(x)
    digit = tf.keras.layers.Dense(num_classes, activation="softmax", name="digit")(x)
    parity = tf.keras.layers.Dense(2, activation="softmax", name="parity")(x)
    return tf.keras.Model([pixels, stats], [digit, parity])
