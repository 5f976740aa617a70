"""Batch prediction with a serving SavedModel (the CLI, with its inputs and outputs: trainer.predict)."""
import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import re
import sys
import tempfile
import time
import uuid
from typing import Callable, Iterator, List, Optional, Sequence, Union

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.util import files  # noqa: E402
from trainer.cloud import gcs
from trainer.model import model_source
from trainer.data.sources import IMAGE_EXTENSIONS  # noqa: E402
from trainer.errors import UsageError  # noqa: E402
from trainer.data.inputs import decode_image, to_model_images  # noqa: E402

OUTPUT_FORMATS = (".csv", ".jsonl")
PROGRESS_EVERY_SECS = 5.0


class Serving:
    """The `serving_default` signature of a SavedModel, with its class names."""

    def __init__(self, saved_model_dir: str):
        try:
            self._loaded = tf.saved_model.load(saved_model_dir)  # Keep a reference: the signature needs it.
            self.fn = self._loaded.signatures["serving_default"]
        except (OSError, KeyError, ValueError, tf.errors.OpError) as e:
            raise UsageError(f"--model: {saved_model_dir} is not a loadable serving SavedModel "
                             f"({type(e).__name__}: {str(e)[:200]})") from None
        inputs = self.fn.structured_input_signature[1]
        outputs = self.fn.structured_outputs
        if len(inputs) != 1 or "probabilities" not in outputs:
            raise UsageError(f"--model: the SavedModel's serving_default takes {sorted(inputs)} and returns "
                             f"{sorted(outputs)}; batch prediction needs one image input and `probabilities`")
        (self.input_name, spec), = inputs.items()
        self.takes_bytes = spec.dtype == tf.string
        self.image_shape = None if self.takes_bytes else tuple(spec.shape[1:])
        self.num_classes = int(outputs["probabilities"].shape[-1])
        self.class_names = _class_names(self.fn, saved_model_dir, self.num_classes)

    def __call__(self, batch) -> np.ndarray:
        """Probabilities [batch, classes] for a list of encoded images or a float array."""
        values = tf.constant(batch, tf.string) if self.takes_bytes else tf.constant(batch, tf.float32)
        return self.fn(**{self.input_name: values})["probabilities"].numpy()


def _class_names(fn, saved_model_dir: str, num_classes: int) -> List[str]:
    """The names the model's `classes` output is gathered from (export.with_class_names).

    They are a constant in the serving graph; a model exported without them falls back
    to the run's run_info.json when it is nearby, else to "0".."n-1".
    """
    classes = fn.structured_outputs.get("classes")
    op = classes.op if classes is not None else None
    while op is not None and op.type == "Identity":
        op = op.inputs[0].op
    if op is not None and op.type in ("GatherV2", "Gather") and op.inputs[0].op.type == "Const":
        names = tf.make_ndarray(op.inputs[0].op.get_attr("value"))
        if len(names) == num_classes:
            return [n.decode() for n in names]
    for up in (2, 3):  # <model_dir>/export/<kind>/<version>
        info = os.path.join(saved_model_dir, *[".."] * up, "run_info.json")
        if os.path.exists(info):
            names = json.load(open(info)).get("class_names", [])
            if len(names) == num_classes:
                return list(names)
    return [str(i) for i in range(num_classes)]


@dataclasses.dataclass
class Item:
    """One input: its key (path or index), its true class (a name, or a class id) when known, and its payload."""

    key: object
    label: Optional[Union[str, int]]
    load: Callable[[], object]


# ---- Inputs -------------------------------------------------------------------------------------------------

def list_inputs(data: str, max_bytes: int = 64 * 2**20) -> tuple:
    """(key column name, items, count or None) for --data; image files above `max_bytes` become error rows."""
    if data.endswith(".npz"):
        return ("index", *_npz_items(data))
    if tf.io.gfile.isdir(data):
        paths = sorted(_image_files(data))
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
            files += [(p, os.path.basename(match.rstrip("/"))) for p in sorted(_image_files(match))]
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


def _image_files(root: str) -> Iterator[str]:
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
        frames = list(tfrecords._frames(tfrecords._read_shard(shard)))
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


class _InputError(Exception):
    """An input found unreadable before it is loaded (its message is the row's error as it is)."""


def _raise(message: str):
    raise _InputError(message)


# ---- Prediction ---------------------------------------------------------------------------------------------

def _batches(items, size: int) -> Iterator[List[Item]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _payload(item: Item, serving: Serving):
    """Reads (and, for float-input models, decodes) one input; runs in a worker thread."""
    value = item.load()
    if serving.takes_bytes:
        if isinstance(value, np.ndarray):  # Arrays for an image-bytes model: lossless PNG.
            pixels = np.clip(value, 0, 255).astype(np.uint8)
            return tf.io.encode_png(pixels[..., None] if pixels.ndim == 2 else pixels).numpy()
        return value
    size = serving.image_shape[0]
    if isinstance(value, np.ndarray):  # The training pipeline's own channel and size handling.
        return to_model_images(tf.constant(value[None]), size)[0].numpy()
    return decode_image(value, size).numpy()  # Raises on an unreadable image.


def _error_text(e: Exception) -> str:
    if isinstance(e, _InputError):
        return str(e)
    message = e.message if isinstance(e, tf.errors.OpError) else str(e)
    message = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{[^}]*\}\}\s*", "", message))  # TF's op decorations.
    return f"{type(e).__name__}: {message.strip().splitlines()[0][:300] if message.strip() else ''}"


def _decode_error(value) -> Optional[str]:
    """The plain decoder's message for bytes the serving graph refused (its own is a graph trace)."""
    if not isinstance(value, bytes):
        return None
    try:
        tf.io.decode_image(value, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        return _error_text(e)
    return None


def predict(serving: Serving, items, batch_size: int, workers: int = 8) -> Iterator[tuple]:
    """Yields (item, probabilities or None, error or None) in input order.

    Files are read (and, for float-input models, decoded) by a thread pool one batch
    ahead of the model; image-bytes models decode inside the SavedModel, as an endpoint
    does. A batch the model refuses (an undecodable image in it) is retried one input
    at a time, so only the bad inputs get an error.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(batch):
            return batch, [pool.submit(_payload, item, serving) for item in batch]

        pending = collections.deque()
        batches = _batches(items, batch_size)
        for batch in batches:
            pending.append(submit(batch))
            if len(pending) < 2:  # Keep one batch reading while the model runs the other.
                continue
            yield from _run(serving, *pending.popleft())
        while pending:
            yield from _run(serving, *pending.popleft())


def _run(serving: Serving, batch: List[Item], futures) -> Iterator[tuple]:
    loaded, errors = [], {}
    for i, future in enumerate(futures):
        try:
            loaded.append((i, future.result()))
        except Exception as e:  # Unreadable file: any exception type (I/O, decode, permissions).
            errors[i] = _error_text(e)
    probabilities = {}
    if loaded:
        try:
            values = [v for _, v in loaded]
            out = serving(values if serving.takes_bytes else np.stack(values))
            probabilities = {i: p for (i, _), p in zip(loaded, out)}
        except tf.errors.InvalidArgumentError:
            for i, value in loaded:  # Find the input(s) the model cannot decode.
                try:
                    probabilities[i] = serving([value] if serving.takes_bytes else value[None])[0]
                except tf.errors.InvalidArgumentError as e:
                    errors[i] = _decode_error(value) or _error_text(e)
    for i, item in enumerate(batch):
        yield item, probabilities.get(i), errors.get(i)


# ---- Output -------------------------------------------------------------------------------------------------

class RowWriter:
    """CSV or JSON lines, streamed into a temporary file, published by `close`."""

    def __init__(self, output: str, key: str):
        self.output, self.key = output, key
        self.jsonl = output.endswith(".jsonl")
        folder = tempfile.mkdtemp(prefix="predict-") if gcs.is_gcs(output) else os.path.dirname(output) or "."
        os.makedirs(folder, exist_ok=True)
        self.tmp = os.path.join(folder, f".{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}")
        self.file = open(self.tmp, "w", newline="")
        self.csv = None if self.jsonl else csv.writer(self.file)
        if self.csv:
            self.csv.writerow([key, "predicted", "probability", "top_k", "error"])

    def write(self, key, predicted, probability, top_k, error) -> None:
        if self.jsonl:
            self.file.write(json.dumps({self.key: key, "predicted": predicted, "probability": probability,
                                        "top_k": top_k, "error": error}) + "\n")
        else:
            self.csv.writerow([key, predicted or "", "" if probability is None else probability,
                               "" if top_k is None else json.dumps(top_k), error or ""])

    def close(self) -> None:
        self.file.close()
        publish(self.tmp, self.output)

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def publish(local_tmp: str, output: str) -> None:
    """Renames a finished local file into place, or uploads it to gs://."""
    if gcs.is_gcs(output):
        gcs.upload(local_tmp, output)
        os.remove(local_tmp)
    else:
        os.replace(local_tmp, output)


def confusion_path(output: str) -> str:
    return os.path.splitext(output)[0] + ".confusion.csv"


def write_confusion(path: str, class_names: Sequence[str], matrix: np.ndarray) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, matrix):
        writer.writerow([name, *map(int, row)])
    folder = tempfile.mkdtemp(prefix="predict-") if gcs.is_gcs(path) else os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())
    publish(tmp, path)


# ---- The command --------------------------------------------------------------------------------------------

def run(model: str, data: str, output: str, top_k: int = 3, batch_size: int = 64, workers: int = 8,
        log=None, max_image_mb: int = 64) -> dict:
    """Predicts every input of `data` into `output`; returns the summary.

    Raises:
        UsageError: a bad argument, a missing model or data; unreadable inputs are rows, not errors.
    """
    log = log or sys.stderr
    if not output.endswith(OUTPUT_FORMATS):
        raise UsageError(f"--output={output} must end in .csv or .jsonl")
    files.check_output_file(output)  # Before the whole prediction runs.
    if top_k < 1:
        raise UsageError(f"--top_k={top_k} must be at least 1")
    if batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be a positive integer")
    if not data:
        raise UsageError("--data is required: a folder, a file glob, a TFRecord glob or an .npz file")
    serving = Serving(model_source.resolve(model))
    if max_image_mb < 1:
        raise UsageError(f"--max_image_mb={max_image_mb} must be at least 1")
    key, items, total = list_inputs(data, max_image_mb * 2**20)
    names = serving.class_names
    index = {n: i for i, n in enumerate(names)}
    k = min(top_k, len(names))
    writer = RowWriter(output, key)
    count = errors = labelled = correct = 0
    unlabelled = False
    matrix = np.zeros((len(names), len(names)), np.int64)
    started = last = time.time()
    try:
        for item, probabilities, error in predict(serving, items, batch_size, workers):
            count += 1
            if error is not None:
                errors += 1
                writer.write(item.key, None, None, None, error)
            else:
                order = np.argsort(-probabilities, kind="stable")[:k]
                best = int(order[0])
                writer.write(item.key, names[best], float(probabilities[best]),
                             [[names[i], float(probabilities[i])] for i in order], None)
                truth = index.get(item.label) if isinstance(item.label, str) else item.label
                truth = truth if truth is not None and 0 <= truth < len(names) else None
                if truth is not None:
                    labelled += 1
                    correct += int(truth == best)
                    matrix[truth, best] += 1
                else:
                    unlabelled = True
            now = time.time()
            if now - last >= PROGRESS_EVERY_SECS:
                last = now
                rate = count / (now - started)
                where = f"{count}/{total} inputs ({100.0 * count / total:.0f}%)" if total else f"{count} inputs"
                eta = f", ETA {time.strftime('%H:%M:%S', time.gmtime((total - count) / rate))}" if total else ""
                log.write(f"predict: {where}, {rate:.1f} inputs/s{eta}\n")
                log.flush()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    seconds = time.time() - started
    summary = {"output": output, "inputs": count, "errors": errors, "seconds": round(seconds, 2),
               "inputs_per_second": round(count / max(seconds, 1e-9), 1), "model": model}
    log.write(f"predict: {count} inputs ({errors} unreadable) in {seconds:.1f} s, "
              f"{summary['inputs_per_second']} inputs/s\n")
    if labelled and not unlabelled:
        summary["accuracy"] = correct / labelled
        summary["confusion_matrix"] = confusion_path(output)
        write_confusion(summary["confusion_matrix"], names, matrix)
        log.write(f"predict: accuracy {summary['accuracy']:.4f} on {labelled} labelled inputs; confusion matrix: "
                  f"{summary['confusion_matrix']}\n")
    return summary
