"""Input-pipeline throughput on its own: images/s decoded, resized and batched.

    python scripts/benchmark_input.py [--images=2000] [--source_size=256] [--image_size=96] [--runs=3]

Writes a synthetic JPEG folder (photo-like: smooth gradients plus noise, so JPEG
sizes are realistic), converts it to TFRecords with `trainer.convert`, then times
`trainer.inputs.make_input_fn` (the training pipeline: shuffle, parallel decode,
resize, batch) over each, with the decoded-image cache off (every image decoded
every time) and on (the default when the images fit; the timed batches come after
the first epoch), each with the tf.data autotuner off (the Estimator engine's pipelines: fixed parallelism)
and on (the Keras engine's). Prints a table: median and spread over --runs.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.data import conversion as convert  # noqa: E402
from trainer.data import sources as data_lib
from trainer.data import inputs
from trainer.config import Config  # noqa: E402


def make_folder(root: str, images: int, size: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(images):
        label = i % 5
        os.makedirs(os.path.join(root, f"class{label}"), exist_ok=True)
        base = np.stack([np.sin(xx * (3 + label) + i) , np.cos(yy * (2 + i % 7)), xx * yy], -1)
        pixels = ((base + 1.5) * 70 + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"class{label}", f"{i}.jpg"), quality=90)


def images_per_second(split, image_size: int, batch_size: int, batches: int, autotune: bool = False) -> float:
    fn = inputs.make_input_fn(split, training=True, batch_size=batch_size, input_names=["image"],
                              output_names=["probabilities"], label_mode="sparse", num_classes=5,
                              image_size=image_size, class_names=[f"class{i}" for i in range(5)], autotune=autotune)
    iterator = iter(fn())
    for _ in range(5):  # Warm-up: thread pools, autotuning.
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source_size", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100)  # 3,200 images: past the first epoch (1,600).
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, records = os.path.join(tmp, "jpegs"), os.path.join(tmp, "records")
        make_folder(folder, args.images, args.source_size)
        convert.convert(folder, records, shards=4)
        sources = {
            "JPEG folder": data_lib.load(Config(data=folder)).train,
            "TFRecord shards": data_lib.load(Config(data=os.path.join(records, "train-*"),
                                                    eval_data=os.path.join(records, "validation-*"))).train,
        }
        print(f"{args.images} JPEGs of {args.source_size}x{args.source_size} -> {args.image_size}x"
              f"{args.image_size}, batch {args.batch_size}, {os.cpu_count()} CPUs, TF {tf.__version__}")
        print("| source | decoded images in memory | tf.data autotuner | images/s (median) | min | max |")
        print("|---|---|---|---|---|---|")
        default_cache = inputs.CACHE_BYTES
        for name, split in sources.items():
            for label, cache_bytes in (("no: decoded every epoch", 0), ("yes (uint8), after the first epoch",
                                                                         default_cache)):
                for autotune in (False, True):  # Off: the Estimator engine's pipelines; on: the Keras engine's.
                    inputs.CACHE_BYTES = cache_bytes
                    rates = [images_per_second(split, args.image_size, args.batch_size, args.batches, autotune)
                             for _ in range(args.runs)]
                    print(f"| {name} | {label} | {'on (Keras engine)' if autotune else 'off (Estimator engine)'} | "
                          f"{statistics.median(rates):.0f} | {min(rates):.0f} | {max(rates):.0f} |")
                    sys.stdout.flush()
        inputs.CACHE_BYTES = default_cache


if __name__ == "__main__":
    main()
