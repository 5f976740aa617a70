"""The TFRecord image schema: writing examples, reading and splitting shards.

Schema (the common one for image classification):
  image/encoded      bytes   JPEG or PNG
  image/class/label  int64   class id
  image/class/text   bytes   class name (optional)

A TFRecord source without a separate `--eval_data` is split per record by a
fingerprint of `<shard file name>:<record index>`, so a record's split never
depends on the machine or on the other shards.
"""
import os
from typing import List, Optional, Sequence

import tensorflow as tf

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_BUCKETS = 1_000_000


def encode_example(image_bytes: bytes, label: int, text: str = "") -> bytes:
    """One serialized tf.train.Example in the schema above."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    if text:
        feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(record, vocabulary: Optional[Sequence[str]] = None):
    """Serialized example -> (encoded image, label).

    With a vocabulary, a record's class text (when present) is looked up in it; a text
    the vocabulary lacks gives label -1, which the pipeline drops.
    """
    ex = tf.io.parse_single_example(record, _FEATURES)
    label = ex["image/class/label"]
    if vocabulary:
        matches = tf.equal(tf.constant(list(vocabulary)), ex["image/class/text"])
        by_text = tf.where(tf.reduce_any(matches), tf.argmax(tf.cast(matches, tf.int64)), tf.constant(-1, tf.int64))
        label = tf.where(tf.equal(ex["image/class/text"], ""), label, by_text)
    return ex["image/encoded"], label


def parse_label_and_text(record):
    ex = tf.io.parse_single_example(record, {k: v for k, v in _FEATURES.items() if k != "image/encoded"})
    return ex["image/class/label"], ex["image/class/text"]


def records(shards: List[str], part: str = "all", fraction: float = 0.0, deterministic: bool = True,
            input_context=None) -> tf.data.Dataset:
    """Serialized records of `part` ('all', 'train' or 'validation'), shards read in parallel."""
    files = tf.data.Dataset.from_tensor_slices(shards)
    if input_context is not None and input_context.num_input_pipelines > 1:
        files = files.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)

    def read(path):
        name = tf.strings.split(path, "/")[-1]
        ds = tf.data.TFRecordDataset(path).enumerate()
        if part == "all":
            return ds.map(lambda i, r: r)
        threshold = int(fraction * _BUCKETS)

        def in_validation(i, _):
            key = tf.strings.join([name, tf.strings.as_string(i)], ":")
            return tf.strings.to_hash_bucket_fast(key, _BUCKETS) < threshold

        keep = in_validation if part == "validation" else (lambda i, r: tf.logical_not(in_validation(i, r)))
        return ds.filter(keep).map(lambda i, r: r)

    return files.interleave(read, cycle_length=min(len(shards), 8), num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)


def shard_name(output: str, split: str, index: int, count: int) -> str:
    return os.path.join(output, f"{split}-{index:05d}-of-{count:05d}.tfrecord")
