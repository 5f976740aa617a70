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
        step = int(eval_result.get("global_step", 0))
        self._reporter.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=self.metric, metric_value=float(eval_result[self.metric]),
            global_step=step, checkpoint_path=checkpoint_path or "")
        logging.info("reported %s=%.6f at step %d for hyperparameter tuning", self.metric,
                     float(eval_result[self.metric]), step)


