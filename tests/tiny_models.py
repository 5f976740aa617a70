"""A --model_fn model on digits' own 8x8x1 pixels (not RGB), for the TFLite export test."""
import tensorflow as tf


def gray(num_classes: int) -> tf.keras.Model:
    pixels = tf.keras.Input((8, 8, 1), name="pixels")
    x = tf.keras.layers.Flatten(name="flat")(pixels)
    return tf.keras.Model(pixels, tf.keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x))


def rgb(num_classes: int) -> tf.keras.Model:
    """8x8x3 input: does not fit digits (8x8x1), for the input-shape check."""
    pixels = tf.keras.Input((8, 8, 3), name="pixels")
    x = tf.keras.layers.Flatten(name="flat")(pixels)
    return tf.keras.Model(pixels, tf.keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x))
