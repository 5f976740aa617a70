"""What runs after each Estimator evaluation: trainer.policy.after_evaluation, adapted as one exporter; plus
evaluating a checkpoint an interruption left unevaluated."""
import os
import time
from typing import Optional

import tensorflow as tf

from trainer.config import Config
from trainer.outputs.evaluations import processed_step
from trainer.outputs.export import checkpoint_is_finite
from trainer.policy import catch_up as catch_up_policy
from trainer.policy.after_evaluation import AfterEvaluation


def export_apart(export) -> str:
    """Runs an Estimator export (which names its folder after the second it starts, through temp-<seconds>), again
    in the next second when another process of the cluster (the chief's last export, the evaluator's) took that
    second's folder in the same export root: TensorFlow refuses a temporary folder that exists."""
    for attempt in range(5):
        try:
            path = export()
            return path.decode() if isinstance(path, bytes) else path
        except (AssertionError, tf.errors.AlreadyExistsError) as e:  # The temp folder, or the final one's rename.
            if "already exists" not in str(e) or attempt == 4:
                raise
            time.sleep(1.0)


class PolicyExporter(tf.estimator.Exporter):
    """trainer.policy.after_evaluation as the Estimator's one exporter: each evaluation's export decision, early
    stopping, markers, console line, image and tuning report, exporting through a LatestExporter of the served
    model (`exporting`: the head's Estimator, or with --cache_features the full model's FullModelExport)."""

    def __init__(self, config: Config, serving_input_fn, class_names=(), exporting=None):
        self._policy = AfterEvaluation(config, class_names)
        self._serving_fn, self._exporting = serving_input_fn, exporting

    @property
    def name(self) -> str:
        return "evaluation_reporter"  # Never written to: exports go to export/<--export>.

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        def export_fn(root: str, keep: Optional[int]) -> str:
            saver = tf.estimator.LatestExporter(name=os.path.basename(root), exports_to_keep=keep,
                                                serving_input_receiver_fn=self._serving_fn)
            return export_apart(lambda: saver.export(self._exporting or estimator, root, checkpoint_path, eval_result,
                                                     is_the_final_export))

        return self._policy(eval_result, is_the_final_export, export_fn,
                            lambda: not checkpoint_path or checkpoint_is_finite(checkpoint_path))


def catch_up(estimator, eval_spec, checkpoint_dir: str, first_step: int, every: int,
             final: bool = False, announce: bool = True) -> Optional[dict]:
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
    if not catch_up_policy.due(step, processed_step(checkpoint_dir), first_step, every, final):
        return None
    if announce:
        catch_up_policy.announce(step)
    result = estimator.evaluate(eval_spec.input_fn, steps=eval_spec.steps, name=eval_spec.name,
                                hooks=eval_spec.hooks, checkpoint_path=latest)
    export_base = os.path.join(estimator.model_dir, "export")
    for exporter in eval_spec.exporters or ():
        exporter.export(estimator, os.path.join(export_base, exporter.name), latest, result, final)
    return result
