"""The plain Keras script users compare the trainer with (for scripts/benchmark.py).

    python scripts/keras_baseline.py --data=<folder> --out=<dir> [--steps=300] [--batch_size=32] [--image_size=96]

image_dataset_from_directory + a frozen MobileNetV2 (random weights: nothing can be downloaded here;
speed is the same) with a new head, model.fit for --steps steps, model.evaluate on the validation
split, model.save as a SavedModel.
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=96)
    args = parser.parse_args()
    size = (args.image_size, args.image_size)
    common = dict(validation_split=0.2, seed=42, image_size=size, batch_size=args.batch_size)
    train = tf.keras.utils.image_dataset_from_directory(args.data, subset="training", **common)
    val = tf.keras.utils.image_dataset_from_directory(args.data, subset="validation", **common)
    classes = len(train.class_names)
    train = train.repeat().prefetch(tf.data.AUTOTUNE)
    base = tf.keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=size + (3,))
    base.trainable = False
    inputs = tf.keras.Input(size + (3,))
    x = tf.keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = base(x, training=False)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(classes, activation="softmax")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    model.fit(train, steps_per_epoch=args.steps, epochs=1, verbose=2)
    loss, accuracy = model.evaluate(val, verbose=0)
    model.save(os.path.join(args.out, "saved_model"))
    print(f'{{"accuracy": {accuracy}, "loss": {loss}, "fit_evaluate_save_seconds": {time.time() - start:.1f}}}')


if __name__ == "__main__":
    main()
