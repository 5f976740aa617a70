"""The floor of --cache_features (for scripts/benchmark.py): what no cached run can avoid.

    python scripts/benchmark_floor.py --data=<folder> [--image_size=96] [--batch_size=32]

TF import, then one forward pass of the frozen trunk (MobileNetV2, random weights,
the benchmark's) over every image of the folder (training and validation splits
alike): files read and decoded in parallel, resized, batched, the trunk run as one
graph function. Nothing else: no data checks, no head, no checkpoint, no export.
"""
import time

IMPORT_START = time.time()

import argparse  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

IMPORT_SECONDS = time.time() - IMPORT_START


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    size = args.image_size
    paths = sorted(glob.glob(os.path.join(args.data, "*", "*.jpg")))

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return tf.image.resize(image, [size, size])

    images = (tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=os.cpu_count())
              .batch(args.batch_size).prefetch(2))
    trunk = tf.keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    forward = tf.function(lambda x: trunk(x / 127.5 - 1.0, training=False),
                          input_signature=[tf.TensorSpec([None, size, size, 3])])
    start, count = time.time(), 0
    for batch in images:
        count += int(forward(batch).shape[0])
    print(f'{{"images": {count}, "import_seconds": {IMPORT_SECONDS:.1f}, '
          f'"forward_seconds": {time.time() - start:.1f}, "total_seconds": {time.time() - IMPORT_START:.1f}}}')


if __name__ == "__main__":
    main()
