"""What follows every evaluation, for both engines, in this order:

1. the export `--export` asks for: `best` (when it beats best.json's record, across restarts), `latest`, or
   `final` (the run's last evaluation only); never of weights that are not all finite;
2. early stopping's count (trainer.run.early_stopping);
3. the processed marker, eval/processed.json (a restart catches up on a step saved but not marked), after the
   per-example results of this and the best evaluation are kept for the report (trainer.outputs.metrics);
4. the console line, and early stopping's decision as a warning (not at the run's last evaluation);
5. the confusion-matrix image (never allowed to stop training);
6. hyperparameter tuning's report (--hypertune_metric, or Vertex AI's variables).

An engine calls `AfterEvaluation(...)(result, final, export, finite)` with its evaluation's result (the scalars,
`global_step`, optionally `confusion_matrix`) and two callables of its own: `export(root, keep)` writes a
SavedModel under `root` keeping at most `keep` versions (None: all) and returns its path; `finite()` says whether
the evaluated weights are all finite. Each engine calls it from its own evaluation (adapters in
trainer/engines/<name>/), so this module knows no engine.
"""
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.cloud import hypertune
from trainer.config import Config
from trainer.outputs import evaluations, export, metrics, predictions
from trainer.run import early_stopping
from trainer.util import console, files

ExportFn = Callable[[str, Optional[int]], Optional[str]]


def best_metric(config: Config) -> str:
    """The metric the best export is chosen on: early stopping's when it is on, else accuracy."""
    return config.early_stopping_metric if config.early_stopping_patience else "accuracy"


def scalars(result: dict) -> dict:
    return {k: int(v) if k == "global_step" else float(v) for k, v in result.items() if np.ndim(v) == 0}


class AfterEvaluation:
    def __init__(self, config: Config, class_names=()):
        self.config, self._class_names = config, list(class_names)
        self._dir = config.checkpoint_dir
        self._hypertune = hypertune.Reporter(config.hypertune_metric) if config.hypertune_metric else None
        self._warned_image = False

    def __call__(self, result: dict, final: bool, export_fn: ExportFn, finite: Callable[[], bool]) -> Optional[str]:
        """Runs the actions for one evaluation; returns the path exported, or None."""
        config, step = self.config, int(result["global_step"])
        exported = self.export(result, final, export_fn, finite)
        if config.early_stopping_patience:
            early_stopping.record(config.model_dir, config.early_stopping_metric, config.early_stopping_patience,
                                  config.early_stopping_min_delta, result)
        metrics.keep_collected(self._dir, {step, evaluations.best_step(self._dir)})
        # Every action above has seen this step: a restart need not evaluate it again.
        tf.io.gfile.makedirs(os.path.join(self._dir, "eval"))  # Made by the evaluation's summaries, as a rule.
        files.write_json(os.path.join(self._dir, "eval", evaluations.PROCESSED), {"step": step})
        console.say("%s", evaluations.evaluation_line(self._dir, result, exported))
        decision = early_stopping.decision_at(config.model_dir, step)
        if decision and not final:  # At the run's last evaluation there is nothing to stop.
            logging.warning("%s", decision)
        self._image(result, step)
        if self._hypertune:
            self._hypertune.report(result, os.path.join(self._dir, f"model.ckpt-{step}"))
        console.sync()
        return exported

    def export(self, result: dict, final: bool, export_fn: ExportFn, finite: Callable[[], bool]) -> Optional[str]:
        """The export of this evaluation, if --export wants one and the weights are finite (a diverged model is
        never served); with --export=best, its record (best.json) written after the SavedModel."""
        config = self.config
        if config.export == "final" and not final:
            return None
        if not finite():
            logging.warning("not exporting step %d: its weights are not all finite", result["global_step"])
            return None
        root = os.path.join(self._dir, "export", config.export)
        keep = None if config.export == "final" else config.keep_checkpoint_max
        if config.export != "best":
            return export_fn(root, keep)
        metric, current = best_metric(config), scalars(result)
        record = export.read_best_record(root, metric) if tf.io.gfile.isdir(root) else None
        if record and not evaluations.better(record["metrics"], current, metric):
            logging.info("not exporting: %s does not beat the best so far (step %d)", evaluations.metric_text(current),
                         record["metrics"].get("global_step", -1))
            return None
        path = export_fn(root, keep)
        if isinstance(path, bytes):
            path = path.decode()
        # The version folder's name only: the model_dir may be reached by another path after a restart.
        best = {"metrics": current, "export": os.path.basename(path.rstrip("/")), "metric": metric}
        if result.get("confusion_matrix") is not None:  # For eval_metrics.json's per-class figures.
            best["confusion_matrix"] = np.asarray(result["confusion_matrix"]).round().astype(int).tolist()
        files.write_json(os.path.join(root, export.BEST_RECORD), best)
        logging.info("best so far: %s, exported to %s", evaluations.metric_text(current), path)
        return path

    def _image(self, result: dict, step: int) -> None:
        matrix = result.get("confusion_matrix")  # Accumulated by the evaluation itself: no second pass.
        if matrix is None:
            return
        try:
            predictions.in_eager_thread(evaluations.write_confusion_image, os.path.join(self._dir, "eval"), matrix,
                                        self._class_names, step)
        except Exception as e:  # noqa: BLE001 - a picture must never stop training.
            # Said once on the console; the log has every occurrence.
            (console.log_only if self._warned_image else logging.warning)(
                "no confusion matrix image for step %d: %s: %s", step, type(e).__name__, str(e)[:300])
            self._warned_image = True
