"""Vertex AI hyperparameter tuning: report a metric after each evaluation.

Active when `--hypertune_metric` is given or Vertex sets `CLOUD_ML_HP_METRIC_TAG` in a
tuning trial. Reporting goes through `cloudml-hypertune`, which appends JSON lines
to `$CLOUD_ML_HP_METRIC_FILE` (default /tmp/hypertune/output.metrics). It is an
Estimator Exporter because exporters are what train_and_evaluate calls with each
evaluation's results, on whichever task evaluates.
"""
from typing import List

import tensorflow as tf
from absl import logging

from trainer.config import Config


class HypertuneReporter(tf.estimator.Exporter):
    """Reports `eval_result[metric]` with the global step; exports nothing."""

    def __init__(self, metric: str):
        self._metric = metric
        self._reporter = None

    @property
    def name(self) -> str:
        return "hypertune"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if self._metric not in eval_result:
            logging.warning("--hypertune_metric=%s is not among the evaluation metrics %s", self._metric,
                            sorted(eval_result))
            return None
        if self._reporter is None:
            import hypertune  # cloudml-hypertune

            self._reporter = hypertune.HyperTune()
        step = int(eval_result.get("global_step", 0))
        self._reporter.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=self._metric, metric_value=float(eval_result[self._metric]),
            global_step=step, checkpoint_path=checkpoint_path or "")
        logging.info("reported %s=%.6f at step %d for hyperparameter tuning", self._metric,
                     float(eval_result[self._metric]), step)
        return None


def make_reporters(config: Config) -> List[tf.estimator.Exporter]:
    return [HypertuneReporter(config.hypertune_metric)] if config.hypertune_metric else []
