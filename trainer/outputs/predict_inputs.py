"""What `trainer.predict` reads: the inputs named by --data (a folder, a glob of images, TFRecords, an .npz), as
items with their bytes or arrays and, where the layout says, their true class; a damaged TFRecord is read past."""
import dataclasses
import os
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from trainer.data.image_files import IMAGE_EXTENSIONS
from trainer.errors import UsageError


@dataclasses.dataclass
class Item:
    """One input: its key (path or index), its true class (a name, or a class id) when known, and its payload."""

    key: object
    label: Optional[Union[str, int]]
    load: Callable[[], object]



def list_inputs(data: str, max_bytes: int = 64 * 2**20) -> tuple:
    """(key column name, items, count or None) for --data; image files above `max_bytes` become error rows."""
    if data.endswith(".npz"):
        return ("index", *_npz_items(data))
    if data == "digits" and not tf.io.gfile.exists(data):  # The trainer's built-in source (wrappers trial U12).
        return ("index", *_digits_items())
    if tf.io.gfile.isdir(data):
        paths = sorted(list_image_files(data))
        if not paths:
            raise UsageError(f"--data={data} has no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
        root = data.rstrip("/")
        items = [Item(p, _folder_label(root, p), _reader(p, max_bytes)) for p in paths]
        return "path", items, len(items)
    matches = sorted(tf.io.gfile.glob(data)) if any(c in data for c in "*?[") else (
        [data] if tf.io.gfile.exists(data) else [])
    if not matches:
        raise UsageError(f"--data={data} does not exist or matches no files (a folder, a file glob, a TFRecord "
                         "glob or an .npz file)")
    files = []  # (path, label): a matched folder's images are labelled by the folder, a file by its parent's name.
    for match in matches:
        if tf.io.gfile.isdir(match):
            files += [(p, os.path.basename(match.rstrip("/"))) for p in sorted(list_image_files(match))]
        else:
            files.append((match, os.path.basename(os.path.dirname(match)) or None))
    if files and (all(_is_tfrecord(p) for p, _ in files) or
                  not any(p.lower().endswith(IMAGE_EXTENSIONS) for p, _ in files)):
        return "path", _tfrecord_items([p for p, _ in files]), None
    if not files:
        raise UsageError(f"--data={data} matches only folders without image files")
    return "path", [Item(p, label, _reader(p, max_bytes)) for p, label in files], len(files)



def _is_tfrecord(path: str) -> bool:
    return ".tfrecord" in os.path.basename(path) or ".tfr" in os.path.basename(path)



def list_image_files(root: str) -> Iterator[str]:
    for dirpath, _, filenames in tf.io.gfile.walk(root):
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(dirpath, name)



def _folder_label(root: str, path: str) -> Optional[str]:
    """The first folder below the root (any depth of sub-folders below it), or None for top-level files."""
    parts = path[len(root):].lstrip("/").split("/")
    return parts[0] if len(parts) > 1 else None



def _reader(path: str, max_bytes: int = 64 * 2**20) -> Callable[[], bytes]:
    def read() -> bytes:
        from trainer.data.sources import file_problem

        problem = file_problem(path, max_bytes)  # A FIFO, /dev/zero or a huge file: an error row, unread.
        if problem:
            raise ValueError(f"not read: {problem}")
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    return read



def _npz_items(path: str):
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            arrays = dict(np.load(f, allow_pickle=False))
    except (ValueError, OSError, tf.errors.OpError) as e:
        raise UsageError(f"--data={path} is not a readable .npz file ({str(e)[:200]})") from None
    x_key = next((k for k in ("x", "x_test", "x_train") if k in arrays), None)
    if x_key is None:
        raise UsageError(f"--data={path} needs an array x (or x_test, or x_train); it has "
                         f"{', '.join(sorted(arrays)) or 'none'}")
    x = arrays[x_key]
    y = arrays.get(x_key.replace("x", "y", 1))
    if y is not None:
        y = y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))
    items = [Item(i, None if y is None else int(y[i]), (lambda a=x[i]: a)) for i in range(len(x))]
    return items, len(items)



def _digits_items():
    """The validation split of `--data=digits` (the trainer's default split), labelled by class id."""
    from trainer.config import Config
    from trainer.data.sources import digits_arrays

    split = digits_arrays(Config().validation_split).validation
    x, y = split.x["x"], split.labels
    items = [Item(i, int(y[i]), (lambda a=x[i]: a)) for i in range(len(x))]
    return items, len(items)


def _tfrecord_items(shards: Sequence[str]) -> Iterator[Item]:
    """Records in the trainer's schema; a shard that stops being readable gives one error row."""
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
                "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
                "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value="")}
    for shard in shards:
        records = tf.data.TFRecordDataset(shard).map(
            lambda r: tf.io.parse_single_example(r, features), num_parallel_calls=tf.data.AUTOTUNE).prefetch(64)
        index = 0
        try:
            for ex in records.as_numpy_iterator():
                text = ex["image/class/text"].decode()
                label = text or (int(ex["image/class/label"]) if ex["image/class/label"] >= 0 else None)
                yield Item(f"{shard}:{index}", label, (lambda b=ex["image/encoded"]: b))
                index += 1
        except tf.errors.OpError:
            # A damaged record: TensorFlow's reader stops there. The resynchronising reader goes on past it: one
            # error row per damaged record, every readable record after it still predicted.
            yield from _items_after_fault(shard, index, features)



def _items_after_fault(shard: str, done: int, features: dict) -> Iterator[Item]:
    from trainer.data import tfrecords

    try:
        frames = list(tfrecords.frames_of(tfrecords.read_shard(shard)))
    except UsageError as e:
        yield Item(f"{shard}:{done}", None, lambda error=str(e): _raise(error))
        return
    index = 0
    for kind, offset, value in frames:
        if kind != "record":
            yield Item(f"{shard}:@{offset}", None, lambda error=f"{value} at byte {offset}": _raise(error))
            continue
        if index >= done:
            try:
                ex = tf.io.parse_single_example(value, features)
            except (tf.errors.OpError, ValueError):
                yield Item(f"{shard}:{index}", None, lambda: _raise("not a tf.train.Example"))
            else:
                text = ex["image/class/text"].numpy().decode()
                label = text or (int(ex["image/class/label"]) if ex["image/class/label"] >= 0 else None)
                yield Item(f"{shard}:{index}", label, (lambda b=ex["image/encoded"].numpy(): b))
        index += 1



class InputFileError(Exception):
    """An input found unreadable before it is loaded (its message is the row's error as it is)."""



def _raise(message: str):
    raise InputFileError(message)
