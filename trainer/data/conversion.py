"""A folder of class sub-folders into TFRecord shards (the CLI and the files it writes: trainer.convert)."""
import os
import random
import uuid
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from trainer.errors import UsageError  # noqa: E402

# TensorFlow is imported by the functions that need it, so --help and argument errors answer at once.

_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG"


def _encoded(path: str) -> bytes:
    """The file's bytes if JPEG or PNG, else the image re-encoded as PNG."""
    import tensorflow as tf

    raw = tf.io.gfile.GFile(path, "rb").read()
    if raw.startswith(_JPEG) or raw.startswith(_PNG):
        return raw
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    return tf.io.encode_png(image).numpy()


def _write_atomically(path: str, records: List[bytes]) -> None:
    import tensorflow as tf

    # A hidden temporary name: a half-written shard of a killed run never matches the `train-*` glob.
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(record)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def convert(data: str, output: str, shards: int, validation_split: float = 0.2,
            labels_file: Optional[str] = None, max_bad_fraction: float = 0.1, seed: int = 42) -> dict:
    """Writes the shards and labels.txt; returns the report.

    A `validation_split` of 0 converts everything into training shards. A split gets at most
    one shard per image (no empty shards).
    """
    import tensorflow as tf

    from trainer.data import sources as data_lib
    from trainer.util import files
    from trainer.data import tfrecords
    from trainer.config import Config

    if shards < 1:
        raise UsageError(f"--shards={shards} must be at least 1")
    if not 0.0 <= validation_split < 1.0:
        raise UsageError(f"--validation_split={validation_split} must be in [0, 1) (0: training shards only)")
    if not tf.io.gfile.isdir(data):
        raise UsageError(f"--data={data} is not a folder of class sub-folders")
    if "://" not in data + output and os.path.realpath(output).startswith(os.path.realpath(data).rstrip("/") + "/"):
        # Trial c201/c202: the shards' folder became a class folder of the next training on --data.
        raise UsageError(f"--output={output} is inside --data={data}: its folder would be taken for a class; "
                         "write the shards elsewhere")
    if "://" not in data + output and os.path.realpath(output) == os.path.realpath(data):
        # Wrappers trial U9: the shards and labels.txt went among the class folders.
        raise UsageError(f"--output={output} is the --data folder itself: the shards and labels.txt would lie among "
                         "the class folders; write them elsewhere")
    dataset = data_lib.load(Config(data=data, validation_split=validation_split, labels_file=labels_file,
                                   max_bad_fraction=max_bad_fraction), require_validation=validation_split > 0)
    odd = [name for name in dataset.class_names if any(c in name for c in "\n\r\x00")]
    if odd:
        raise UsageError(f"--data={data} has a class folder named {odd[0]!r}: labels.txt holds one class name a "
                         "line, so a name with a line break cannot be stored; rename the folder")
    padded = [name for name in dataset.class_names if name != name.strip()]
    if padded:  # labels.txt is read back stripped: the records of such a class would match no name.
        raise UsageError(f"--data={data} has a class folder named {padded[0]!r}, with leading or trailing "
                         "spaces or tabs, which labels.txt cannot keep; rename the folder")
    files.ensure_dir(output, "output")
    # A killed conversion's half-written shards (`*.tmp-*`) would match the documented train-* glob.
    for leftover in set(tf.io.gfile.glob(os.path.join(output, "*.tmp-*")) +
                        tf.io.gfile.glob(os.path.join(output, ".*.tmp-*"))):
        tf.io.gfile.remove(leftover)
    written, stale = {}, []
    for split_name, split in (("train", dataset.train), ("validation", dataset.validation)):
        examples = list(zip(split.paths, split.labels))
        count = min(shards, len(examples))
        random.Random(seed).shuffle(examples)  # Mix classes across and within shards.
        for index in range(count):
            records = [tfrecords.encode_example(_encoded(p), int(y), dataset.class_names[y])
                       for p, y in examples[index::count]]
            _write_atomically(tfrecords.shard_name(output, split_name, index, count), records)
        if examples:
            written[split_name] = len(examples)
        # Shards of an earlier conversion with another --shards: the glob would read their examples twice.
        fresh = {tfrecords.shard_name(output, split_name, i, count) for i in range(count)}
        for old in tf.io.gfile.glob(os.path.join(output, f"{split_name}-*-of-*.tfrecord")):
            if old not in fresh:
                tf.io.gfile.remove(old)
                stale.append(os.path.basename(old))
    labels_path = os.path.join(output, "labels.txt")
    tmp = f"{labels_path}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(name + "\n" for name in dataset.class_names))
    tf.io.gfile.rename(tmp, labels_path, overwrite=True)
    return {"output": output, "shards": shards, "examples": written, "counts": dataset.counts(),
            "class_names": dataset.class_names, "skipped_files": dataset.skipped_files, "removed_stale_shards": stale}
