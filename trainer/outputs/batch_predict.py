"""Batch prediction with a serving SavedModel (the CLI, with its inputs and outputs: trainer.predict)."""
import collections
import concurrent.futures
import csv
import io
import json
import os
import re
import sys
import tempfile
import time
import uuid
from typing import Iterator, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.util import files  # noqa: E402
from trainer.outputs.export import CLASS_NAMES  # noqa: E402
from trainer.cloud import gcs
from trainer.model import model_source
from trainer.outputs.predict_inputs import Item, InputFileError, list_inputs  # noqa: E402
from trainer.errors import UsageError  # noqa: E402
from trainer.data import tta  # noqa: E402
from trainer.outputs.predict_args import check_arguments  # noqa: E402
from trainer.data.inputs import decode_image, to_model_images  # noqa: E402

PROGRESS_EVERY_SECS = 5.0


class Serving:
    """The `serving_default` signature of a SavedModel, with its class names."""

    def __init__(self, saved_model_dir: str, tta: str = "none"):
        self.tta = tta  # --tta: each input is a list of views (trainer/data/tta.py), their probabilities averaged.
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
        self.class_names = class_names_of(self.fn, saved_model_dir, self.num_classes)

    def __call__(self, batch) -> np.ndarray:
        """Probabilities [batch, classes] for a list of encoded images or a float array (under --tta: of inputs
        that are each a list of views, the views' probabilities averaged)."""
        if self.tta != "none":
            return np.mean([self._call([item[v] for item in batch]) for v in range(tta.count(self.tta))], axis=0)
        return self._call(batch)

    def _call(self, batch) -> np.ndarray:
        values = tf.constant(batch, tf.string) if self.takes_bytes else tf.constant(np.stack(batch) if isinstance(
            batch, list) else batch, tf.float32)
        return self.fn(**{self.input_name: values})["probabilities"].numpy()


def class_names_of(fn, saved_model_dir: str, num_classes: int) -> List[str]:
    """The names the model's `classes` output is gathered from (export.with_class_names).

    They are a constant in the Estimator engine's serving graph, and in assets.extra/class_names.json of the
    Keras engine's exports (its TF2 signature calls the model's function, where the constant is out of reach);
    a model exported without them falls back to the run's run_info.json when it is nearby, else to "0".."n-1".
    """
    extra = os.path.join(saved_model_dir, "assets.extra", CLASS_NAMES)
    if tf.io.gfile.exists(extra):
        try:
            with tf.io.gfile.GFile(extra) as f:
                names = json.load(f)
            if isinstance(names, list) and len(names) == num_classes:
                return [str(n) for n in names]
        except (ValueError, tf.errors.OpError):
            pass
    classes = fn.structured_outputs.get("classes")
    op = getattr(classes, "op", None)
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


# ---- Inputs -------------------------------------------------------------------------------------------------


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
    """Reads (and, for float-input models, decodes) one input; runs in a worker thread. Under --tta: its views,
    as the model takes them (lossless PNG bytes of each for an image-bytes model)."""
    value = _one_payload(item.load(), serving)
    if serving.tta == "none":
        return value
    if not serving.takes_bytes:
        return [view[0].numpy() for view in tta.views(value[None], serving.tta)]
    pixels = tf.io.decode_image(value, channels=3, expand_animations=False)  # Raises on an unreadable image.
    return [tf.io.encode_png(tf.cast(tf.round(tf.clip_by_value(view[0], 0.0, 255.0)), tf.uint8)).numpy()
            for view in tta.views(pixels[None], serving.tta)]


def _one_payload(value, serving: Serving):
    if serving.takes_bytes:
        if isinstance(value, np.ndarray):  # Arrays for an image-bytes model: lossless PNG.
            pixels = np.clip(value, 0, 255).astype(np.uint8)
            return tf.io.encode_png(pixels[..., None] if pixels.ndim == 2 else pixels).numpy()
        return value
    size = serving.image_shape[0]
    if isinstance(value, np.ndarray):  # The training pipeline's own channel and size handling.
        return to_model_images(tf.constant(value[None]), size)[0].numpy()
    return decode_image(value, size).numpy()  # Raises on an unreadable image.


def error_text(e: Exception) -> str:
    if isinstance(e, InputFileError):
        return str(e)
    message = e.message if isinstance(e, tf.errors.OpError) else str(e)
    message = re.sub(r"\s*\[Op:\w+\]", "", re.sub(r"\{\{[^}]*\}\}\s*", "", message))  # TF's op decorations.
    return f"{type(e).__name__}: {message.strip().splitlines()[0][:300] if message.strip() else ''}"


def decode_error(value) -> Optional[str]:
    """The plain decoder's message for bytes the serving graph refused (its own is a graph trace)."""
    if not isinstance(value, bytes):
        return None
    try:
        tf.io.decode_image(value, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        return error_text(e)
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
            errors[i] = error_text(e)
    probabilities = {}
    if loaded:
        try:
            values = [v for _, v in loaded]
            out = serving(values if serving.takes_bytes or serving.tta != "none" else np.stack(values))
            probabilities = {i: p for (i, _), p in zip(loaded, out)}
        except tf.errors.InvalidArgumentError:
            for i, value in loaded:  # Find the input(s) the model cannot decode.
                try:
                    probabilities[i] = serving([value] if serving.takes_bytes or serving.tta != "none"
                                               else value[None])[0]
                except tf.errors.InvalidArgumentError as e:
                    errors[i] = decode_error(value) or error_text(e)
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
        log=None, max_image_mb: int = 64, tta_kind: str = "none") -> dict:
    """Predicts every input of `data` into `output`; returns the summary.

    Raises:
        UsageError: a bad argument, a missing model or data; unreadable inputs are rows, not errors.
    """
    log = log or sys.stderr
    check_arguments(data, output, top_k, batch_size, tta_kind, max_image_mb)
    files.check_output_file(output)  # Before the whole prediction runs.
    serving = Serving(model_source.resolve(model), tta=tta_kind)
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
               "inputs_per_second": round(count / max(seconds, 1e-9), 1), "model": model, "tta": tta_kind}
    views = f", each averaged over {tta.count(tta_kind)} views (--tta={tta_kind})" if tta_kind != "none" else ""
    log.write(f"predict: {count} inputs ({errors} unreadable) in {seconds:.1f} s, "
              f"{summary['inputs_per_second']} inputs/s{views}\n")
    if labelled and not unlabelled:
        summary["accuracy"] = correct / labelled
        summary["confusion_matrix"] = confusion_path(output)
        write_confusion(summary["confusion_matrix"], names, matrix)
        log.write(f"predict: accuracy {summary['accuracy']:.4f} on {labelled} labelled inputs; confusion matrix: "
                  f"{summary['confusion_matrix']}\n")
    return summary
