"""What an evaluation says, engine-neutral: its console line (`eval @ step N: accuracy A, loss L (best B at
step S), exported ...`), the confusion matrix as a TensorBoard image, which step every exporter has seen
(`eval/processed.json`), the best export's step, and `write_hparams`, the HParams summary of a run. The
engine calls them after each evaluation (trainer.engines.estimator.exporters)."""
import io
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from trainer.util import events
from trainer import metric_registry
from trainer.outputs import export
from trainer.util import files


def best_step(model_dir: str) -> Optional[int]:
    """The global step of the best export so far (export/best/best.json), None without one."""
    try:
        return int(export.read_best_record(os.path.join(model_dir, "export", "best"))["metrics"]["global_step"])
    except (TypeError, KeyError, ValueError):
        return None


def evaluation_line(model_dir: str, eval_result: dict, exported: Optional[str]) -> str:
    step = int(eval_result.get("global_step", 0))
    parts = [f"{k} {float(eval_result[k]):.4f}" for k in ("accuracy", "loss") if k in eval_result]
    if not parts:  # Multi-output models: every scalar.
        parts = [f"{k} {float(v):.4f}" for k, v in sorted(eval_result.items()) if k != "global_step"
                 and np.ndim(v) == 0]
    best = events.best(events.evaluations(model_dir).get("accuracy", []))
    best_text = f" (best {best[1]:.4f} at step {best[0]})" if best else ""
    where = f"exported {os.path.relpath(exported, model_dir) if '://' not in exported else exported}" \
        if exported else "not exported"
    return f"eval @ step {step}: {', '.join(parts)}{best_text}, {where}"


def confusion_png(matrix: np.ndarray, class_names=(), cell: int = 0) -> bytes:
    """The confusion matrix as a PNG heatmap: rows true, columns predicted, counts written in the cells
    (up to 30 classes; beyond that, one pixel block per cell)."""
    from PIL import Image, ImageDraw

    n = len(matrix)
    cell = cell or (36 if n <= 12 else 22 if n <= 30 else max(2, 600 // n))
    labelled = n <= 30
    margin = 60 if labelled else 0
    size = margin + n * cell
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # Colour: the fraction of the true class.
    errors = rows * (1 - np.eye(n))
    worst = errors.max() or 1.0
    for i in range(n):
        for j in range(n):
            # As in report.html: off the diagonal, red scaled to the worst confusion, so one mistake shows.
            share = rows[i, j] if i == j else (0.2 + 0.8 * errors[i, j] / worst if matrix[i, j] else 0.0)
            shade = int(255 * (1 - (0.7 if i == j else 0.85) * share))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(220, 220, 220))
            if labelled and matrix[i, j]:
                draw.text((x + 3, y + cell // 3), str(int(matrix[i, j])), fill="black" if shade > 110 else "white")
    if labelled:
        names = [str(c)[:8] for c in (class_names or range(n))]
        for k, name in enumerate(names):
            draw.text((2, margin + k * cell + cell // 3), name, fill="black")  # Rows: true class.
            stagger = 10 * (k % 2) if max(map(len, names)) > 3 else 0  # Long names alternate in height.
            draw.text((margin + k * cell + 2, margin - 14 - stagger), name, fill="black")  # Columns.
        draw.text((2, 2), "true \\ predicted", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_confusion_image(eval_dir: str, matrix: np.ndarray, class_names, step: int) -> None:
    """Adds the heatmap to TensorBoard's Images tab, next to the evaluation's scalars."""
    image = tf.image.decode_png(confusion_png(matrix, class_names), channels=3)
    writer = tf.summary.create_file_writer(eval_dir, filename_suffix=".confusion")
    with writer.as_default():
        tf.summary.image("confusion_matrix", image[None], step=step,
                         description="Rows: true class; columns: predicted class; colour: share of the row.")
    writer.close()


def write_hparams(model_dir: str, flags: dict, metrics: dict) -> None:
    """The HParams summary: flags that differ from defaults and the final metrics, for sweeps side by side."""
    from tensorboard.plugins.hparams import api as hp

    def plain(value):
        return value if isinstance(value, (bool, int, float, str)) else str(value)

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "hparams"))
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(name) for name in sorted(flags)],
                          metrics=[hp.Metric(f"final_{k}") for k in sorted(metrics) if k != "global_step"])
        hp.hparams({name: plain(value) for name, value in flags.items()})
        step = int(metrics.get("global_step", 0))
        for key, value in metrics.items():
            if key != "global_step":
                tf.summary.scalar(f"final_{key}", float(value), step=step)
    writer.close()


PROCESSED = "processed.json"  # In eval/: the step whose evaluation went through every exporter.


def processed_step(checkpoint_dir: str) -> Optional[int]:
    """The last step whose evaluation every exporter saw (older runs: the last evaluation event)."""
    try:
        record = files.read_json(os.path.join(checkpoint_dir, "eval", PROCESSED))
    except ValueError:
        record = None
    if isinstance(record, dict) and isinstance(record.get("step"), int):
        return record["step"]
    evaluated = [s for series in events.evaluations(checkpoint_dir).values() for s, _ in series]
    return max(evaluated) if evaluated else None


def better(best: dict, current: dict, metric: str) -> bool:
    """True when the evaluation `current` beats `best` on `metric` (its direction: the metric registry), else on
    accuracy (or loss)."""
    return metric_registry.better(best, current, metric)


def metric_text(metrics: dict) -> str:
    key = "accuracy" if "accuracy" in metrics else "loss"
    return f"{key} {metrics.get(key, float('nan')):.4f}"


EVALUATOR = "evaluator.json"  # In eval/: the evaluator task's heartbeat, so the chief knows one is evaluating.
_HEARTBEAT_SECS = 5.0
_STALE_SECS = float(os.environ.get("TRAINER_EVALUATOR_STALE_SECS", "60"))  # A heartbeat older: the evaluator is gone.


_beating = set()  # The checkpoint folders this process keeps a heartbeat in.


def start_evaluator_heartbeat(checkpoint_dir: str) -> None:
    """The evaluator task's heartbeat, from a thread for the process's whole life: an evaluation with its export
    can take minutes (a large backbone or validation set), and the chief must not take a busy evaluator for a
    gone one (review of B5's fix). Called again (each phase of either engine), it keeps the one thread."""
    import socket
    import threading
    import time

    if checkpoint_dir in _beating:
        return
    _beating.add(checkpoint_dir)

    def beat():
        while True:
            try:
                tf.io.gfile.makedirs(os.path.join(checkpoint_dir, "eval"))
                files.write_json(os.path.join(checkpoint_dir, "eval", EVALUATOR),
                                 {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
            except Exception:  # noqa: BLE001 - a missed beat is retried; the chief waits at most its bound.
                pass
            time.sleep(_HEARTBEAT_SECS)

    threading.Thread(target=beat, name="evaluator-heartbeat", daemon=True).start()


def evaluator_alive(checkpoint_dir: str) -> bool:
    import time

    try:
        record = files.read_json(os.path.join(checkpoint_dir, "eval", EVALUATOR))
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get("time"), (int, float)) and \
        time.time() - record["time"] < _STALE_SECS


def await_verdict(checkpoint_dir: str, step: int) -> Optional[bool]:
    """The chief of a cluster, at the end of training, both engines: None when no evaluator task is alive to judge
    the final checkpoint at `step` (or its verdict is on record already); True once it has judged it (evaluated,
    exported, counted); False when the chief gave up waiting (said on the console): the chief then evaluates the
    step itself and decides the served model. Waiting keeps the files naming one model (wrappers trial B5) and the
    chief's export out of the evaluator's export root while it writes there (two exports started in one second
    shared TensorFlow's temp-<seconds> folder: one failed, the other could have kept the first's weights)."""
    done = processed_step(checkpoint_dir)
    if (done is not None and done >= step) or not evaluator_alive(checkpoint_dir):
        return None
    wait = float(os.environ.get("TRAINER_EVALUATOR_WAIT_SECS", "600"))
    if wait_for_verdict(checkpoint_dir, step, wait):
        return True
    from trainer.util import console

    console.say("the evaluator task has not evaluated step %d (gone, or more than %g s): the chief evaluates it and "
                "decides the served model", step, wait)
    return False


def wait_for_verdict(checkpoint_dir: str, step: int, timeout: float) -> bool:
    """The chief, at the end of a run with an evaluator task: waits until the evaluator has evaluated (and exported
    after) `step`, so every output file names one served model (wrappers trial B5). False: it gave up (the
    evaluator is gone, or `timeout` passed)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        done = processed_step(checkpoint_dir)
        if done is not None and done >= step:
            return True
        if not evaluator_alive(checkpoint_dir):
            return False
        time.sleep(0.5)
    return False
