"""Vertex AI hyperparameter tuning: report a metric after each evaluation.

Active when `--hypertune_metric` is given or Vertex sets `CLOUD_ML_HP_METRIC_TAG` in a
tuning trial. Reporting goes through `cloudml-hypertune`, which appends JSON lines
to `$CLOUD_ML_HP_METRIC_FILE` (default /tmp/hypertune/output.metrics). An engine
calls `Reporter.report` with each evaluation's results, on whichever
task evaluates.
"""
from typing import Optional

from absl import logging


class Reporter:
    """Reports `eval_result[metric]` with the global step after each evaluation."""

    def __init__(self, metric: str):
        self.metric = metric
        self._reporter = None

    def report(self, eval_result: dict, checkpoint_path: Optional[str] = None) -> None:
        if self.metric not in eval_result:
            logging.warning("--hypertune_metric=%s is not among the evaluation metrics %s", self.metric,
                            sorted(eval_result))
            return
        if self._reporter is None:
            import hypertune  # cloudml-hypertune

            self._reporter = hypertune.HyperTune()
            self._reporter.metrics_queue.extend(_earlier_lines(self._reporter.metric_path, str(
                self._reporter.trial_id), self.metric))
        step = int(eval_result.get("global_step", 0))
        # A restart evaluates again from its checkpoint: an earlier process's line for this step or later goes.
        queue = self._reporter.metrics_queue
        kept = [m for m in queue if _step_of(m) < step]
        queue.clear()
        queue.extend(kept)
        self._reporter.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=self.metric, metric_value=float(eval_result[self.metric]),
            global_step=step, checkpoint_path=checkpoint_path or "")
        logging.info("reported %s=%.6f at step %d for hyperparameter tuning", self.metric,
                     float(eval_result[self.metric]), step)




def _earlier_lines(path: str, trial: str, metric: str) -> list:
    """The lines an earlier process of this trial reported for this metric (the library rewrites the file from its
    own memory, so a restarted run would drop them: wrappers trial U10); another trial's or metric's are not ours."""
    import json
    import os

    if not os.path.exists(path):
        return []
    lines = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and str(record.get("trial")) == trial and metric in record:
                    lines.append(record)
    except OSError:
        return []
    return lines


def _step_of(record: dict) -> int:
    try:
        return int(record.get("global_step", 0))
    except (TypeError, ValueError):
        return 0
