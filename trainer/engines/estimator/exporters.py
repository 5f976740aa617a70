"""What runs after each Estimator evaluation: the exports (best across restarts, latest, final; never of
non-finite weights), early stopping's count, hyperparameter-tuning reports, and the console line; plus
evaluating a checkpoint an interruption left unevaluated."""
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.cloud import hypertune
from trainer.config import Config
from trainer.outputs import metrics, predictions
from trainer.outputs.evaluations import (PROCESSED, best_step, better as _better, evaluation_line,
                                         metric_text as _metric_text, processed_step, write_confusion_image)
from trainer.outputs.export import BEST_RECORD, checkpoint_is_finite, read_best_record
from trainer.run import early_stopping
from trainer.util import console, files


class _GuardedExporter(tf.estimator.Exporter):
    """Exports only checkpoints whose weights are all finite: a diverged model is never served."""

    def __init__(self, inner: tf.estimator.Exporter):
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if checkpoint_path and not checkpoint_is_finite(checkpoint_path):
            logging.warning("not exporting %s: its weights are not all finite", checkpoint_path)
            return None
        return self._inner.export(estimator, export_path, checkpoint_path, eval_result, is_the_final_export)



class BestExporter(tf.estimator.Exporter):
    """Exports when an evaluation beats every earlier one, across restarts.

    Estimator's own BestExporter exports unconditionally on its first call in a process
    (tensorflow#47396), so after a preemption a worse model became "best". Here the best
    result so far is kept in `export/best/best.json` (written after its export, atomically)
    and every process compares against it.
    """

    def __init__(self, serving_input_fn, keep: int, metric: str = "accuracy"):
        self._metric = metric
        self._exporter = tf.estimator.LatestExporter(name="best", serving_input_receiver_fn=serving_input_fn,
                                                     exports_to_keep=keep)

    @property
    def name(self) -> str:
        return "best"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        record = read_best_record(export_path, self._metric)
        current = {k: int(v) if k == "global_step" else float(v) for k, v in eval_result.items() if np.ndim(v) == 0}
        if record and not _better(record["metrics"], current, self._metric):
            logging.info("not exporting: %s does not beat the best so far (step %d)",
                         _metric_text(current), record["metrics"].get("global_step", -1))
            return None
        path = self._exporter.export(estimator, export_path, checkpoint_path, eval_result, is_the_final_export)
        path = path.decode() if isinstance(path, bytes) else path
        # The version folder's name only: the model_dir may be reached by another path after a restart.
        record = {"metrics": current, "export": os.path.basename(path.rstrip("/")), "metric": self._metric}
        if eval_result.get("confusion_matrix") is not None:  # For eval_metrics.json's per-class figures.
            record["confusion_matrix"] = np.asarray(eval_result["confusion_matrix"]).round().astype(int).tolist()
        files.write_json(os.path.join(export_path, BEST_RECORD), record)
        logging.info("best so far: %s, exported to %s", _metric_text(current), path)
        return path



def make_exporters(kind: str, serving_input_fn, keep: int, metric: str = "accuracy") -> List[tf.estimator.Exporter]:
    """The exporter for --export: best (on `metric`, across restarts), latest, or final."""
    if kind == "best":
        exporter = BestExporter(serving_input_fn, keep, metric)
    elif kind == "latest":
        exporter = tf.estimator.LatestExporter(name="latest", serving_input_receiver_fn=serving_input_fn,
                                               exports_to_keep=keep)
    else:
        exporter = tf.estimator.FinalExporter(name="final", serving_input_receiver_fn=serving_input_fn)
    return [_GuardedExporter(exporter)]


class EvaluationReporter(tf.estimator.Exporter):
    """Wraps `exporters`; draws the evaluation's `confusion_matrix` (trainer.outputs.metrics) when it reports one."""

    def __init__(self, exporters: List[tf.estimator.Exporter], model_dir: str, class_names=()):
        self._exporters = exporters
        self._model_dir = model_dir
        self._class_names = list(class_names)
        self._warned = False

    @property
    def name(self) -> str:
        return "evaluation_reporter"  # Never written to: the wrapped exporters use their own names.

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        exported = None
        for exporter in self._exporters:
            result = exporter.export(estimator, os.path.join(os.path.dirname(export_path), exporter.name),
                                     checkpoint_path, eval_result, is_the_final_export)
            exported = result or exported
        if isinstance(exported, bytes):
            exported = exported.decode()
        step = int(eval_result.get("global_step", 0))
        # This evaluation's per-example results stay in memory with the best one's: the end of the run reports one.
        metrics.keep_collected(self._model_dir, {step, best_step(self._model_dir)})
        # Every exporter (best export, early stopping, ...) has seen this step: a restart need not evaluate it.
        files.write_json(os.path.join(self._model_dir, "eval", PROCESSED), {"step": step})
        console.say("%s", evaluation_line(self._model_dir, eval_result, exported))
        decision = early_stopping.decision_at(self._model_dir, step)
        if decision and not is_the_final_export:  # At the run's last evaluation there is nothing to stop.
            logging.warning("%s", decision)
        matrix = eval_result.get("confusion_matrix")  # Accumulated by the evaluation itself: no second pass.
        if matrix is not None:
            try:
                predictions.in_eager_thread(write_confusion_image, os.path.join(self._model_dir, "eval"),
                                            matrix, self._class_names, step)
            except Exception as e:  # noqa: BLE001 - a picture must never stop training.
                # Said once on the console; the log has every occurrence.
                (console.log_only if self._warned else logging.warning)(
                    "no confusion matrix image for step %d: %s: %s", step, type(e).__name__, str(e)[:300])
                self._warned = True
        console.sync()
        return exported



def catch_up(estimator, eval_spec, checkpoint_dir: str, first_step: int, every: int,
             final: bool = False) -> Optional[dict]:
    """Evaluates and exports the latest checkpoint when the uninterrupted run would have and no evaluation has.

    train_and_evaluate skips the checkpoint it starts from ("not trained yet"), so after a restart the
    checkpoint saved just before the interruption (or whose evaluation or export the interruption cut
    short) would never be evaluated: early stopping's patience and the best export would miss it, and
    a kill during the last evaluation would leave the final export undone. Only steps the uninterrupted
    run evaluates are caught up: first_step + k x every (or the last step, `final`); a preemption
    checkpoint at another step is not. Returns the evaluation, or None.
    """
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if not latest:
        return None
    step = int(latest.rsplit("-", 1)[1])
    done = processed_step(checkpoint_dir)
    if step == 0 or (done is not None and done >= step):
        return None
    if not final and (step - first_step) % every:
        return None
    console.say("catching up: step %d was saved before the interruption and not evaluated yet", step)
    result = estimator.evaluate(eval_spec.input_fn, steps=eval_spec.steps, name=eval_spec.name,
                                hooks=eval_spec.hooks, checkpoint_path=latest)
    export_base = os.path.join(estimator.model_dir, "export")
    for exporter in eval_spec.exporters or ():
        exporter.export(estimator, os.path.join(export_base, exporter.name), latest, result, final)
    return result


class HypertuneReporter(tf.estimator.Exporter):
    """Reports each evaluation for Vertex AI hyperparameter tuning (trainer.cloud.hypertune); exports nothing."""

    def __init__(self, metric: str):
        self._reporter = hypertune.Reporter(metric)

    @property
    def name(self) -> str:
        return "hypertune"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        self._reporter.report(eval_result, checkpoint_path)
        return None


def make_reporters(config: Config) -> List[tf.estimator.Exporter]:
    return [HypertuneReporter(config.hypertune_metric)] if config.hypertune_metric else []


class EarlyStoppingWatcher(tf.estimator.Exporter):
    """Counts each evaluation into early stopping's memory (trainer.run.early_stopping); exports nothing."""

    def __init__(self, model_dir: str, metric: str, patience: int, min_delta: float):
        self._args = (model_dir, metric, patience, min_delta)

    @property
    def name(self) -> str:
        return "early_stopping"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        early_stopping.record(*self._args, eval_result)
        return None
