"""The Estimator engine (TensorFlow 2.15): the Keras model through model_to_estimator, each phase one
train_and_evaluate; the loop of trainer.engines.base.Engine, with the policy after each evaluation as one exporter
(trainer.engines.estimator.exporters.PolicyExporter) and the signal policy as a session hook."""
import contextlib
import os
from typing import Optional

import tensorflow as tf

from trainer.config import Config
from trainer.data import record_faults
from trainer.engines import base
from trainer.engines.estimator import (boundary, estimator, exporters, feature_cache, hooks, listeners, metrics,
                                       progress)
from trainer.engines.estimator import predict as estimator_predict
from trainer.engines.estimator import serving
from trainer.errors import UsageError
from trainer.model import models
from trainer.outputs import evaluations
from trainer.run import distribution, phases
from trainer.util import console


class Engine(base.Engine):
    name = "estimator"
    # TPUEstimator trains each phase in graphs of its own: a restart cannot begin a new phase (another recipe).
    recipe_fixed_under = frozenset({"tpu"})
    # Each task skips its own shard's stream, one batch per step (tests/test_cluster_restart.py).
    resumes_input_under = frozenset({"one_device", "multi_worker"})
    # Non-chief tasks start from the Keras checkpoint model_to_estimator makes, which only the chief writes.
    chief_writes_first = os.path.join("keras", "checkpoint")

    def __init__(self, config: Config, plan: distribution.Plan):
        if config.steps_per_execution > 1:  # One line before any work, rather than a flag silently ignored.
            raise UsageError(f"--steps_per_execution={config.steps_per_execution} is --engine=keras's (the "
                             "Estimator runs one step per session call; on TPUs: --tpu_iterations_per_loop)")
        super().__init__(config, plan)
        self.estimator = None
        self._serving_fn = None
        self._specs = None

    # ---- prepare ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        return "TPUEstimator" if self.plan.name == "tpu" else "Estimator"

    def scope(self, finishing: bool = False):
        """Where the stages build and compile the Keras model: eagerly, outside any strategy (the Estimator
        clones it into its own graph, under the strategy)."""
        return contextlib.nullcontext()

    def input_batch_size(self, per_replica: int) -> int:
        """The Estimator calls the training input_fn once per replica: it yields per-replica batches."""
        return per_replica

    def _check_plan(self, planned: list, steps: list) -> None:
        """Refuses phases this engine cannot train under the run's distribution plan."""
        if (len(planned) > 1 or any(s.restart_optimizer for s in steps)) and self.plan.name == "tpu":
            raise UsageError("training phases (--fine_tune_steps, or resuming with another recipe) are not "
                             "supported with --strategy=tpu yet")
        if len(steps) > 1 and self.plan.name == "multi_worker":
            # TF 2.15's graph-mode collectives remember each instance's shape for the process's life and the next
            # phase's graph numbers its instances from the start again: the job failed at the boundary with "Shape
            # mismatch in the collective instance" (issue 36, tests/test_cluster_restart.py). A task that starts in
            # the last phase (a restart) is fine.
            raise UsageError(f"--engine=estimator cannot train {len(steps)} phases in one multi-worker job "
                             "(TensorFlow 2.15's collective ops fail at the phase boundary): use --engine=keras, or "
                             "train the head in one job and fine-tune in a second with --warm_start_from=<the first "
                             "job's model_dir>")

    def prepare_inputs(self, run) -> base.Inputs:
        config, dataset, model = self.config, run.dataset, run.model
        self._check_plan(run.planned, run.steps)
        if len(model.outputs) == 1:  # Before any work: a registered metric this engine cannot stream (one line).
            metrics.check_streamable(run.num_classes, config.label_mode, config.top_k)
        if dataset.kind in ("files", "tfrecord") and not config.model_fn:
            self._serving_fn = serving.make_image_bytes_serving_input_fn(model.input_names[0], model.input_shape[1])
        else:
            self._serving_fn = serving.make_serving_input_fn(
                {name: tuple(t.shape[1:]) for name, t in zip(model.input_names, model.inputs)})
        if not config.cache_features:
            return base.Inputs(run.make_input(dataset.train, True), run.make_input(dataset.validation, False))
        # The head trains and evaluates on the trunk's outputs, computed once here (bad TFRecords skipped).
        cache = record_faults.train_skipping_bad_records(lambda: feature_cache.build(
            config, model, dataset, run.make_input, lambda m, rc: estimator.make_estimator(
                m, rc, dataset.class_names, binary=config.label_mode == "binary"), run.run_info), dataset, config)
        return base.Inputs(cache.train_input, cache.eval_input, cache)

    # ---- phases -----------------------------------------------------------------------------------------
    def _build(self, run, schedule=None):
        return estimator.make_any(self.config, self.plan, run.model, run.num_classes, run.image_shape,
                                  run.dataset.class_names, schedule)

    @property
    def _single(self) -> bool:
        """One process evaluating its own checkpoints (what an interrupted run can catch up on)."""
        return self.plan.is_chief and not self.plan.distributed and self.plan.name != "tpu"

    def start_phase(self, run, step: phases.Step, schedule) -> bool:
        """Enters the phase; True when it evaluated what an interruption had left unevaluated (one process
        evaluating its own checkpoints), so early stopping may have decided."""
        config, plan = self.config, self.plan
        self.estimator = est = self._build(run, schedule)
        if plan.is_evaluator:  # The chief waits for a live evaluator's verdict.
            evaluations.start_evaluator_heartbeat(config.checkpoint_dir)

        def rewrite(first_step: int) -> str:
            return boundary.restart_optimizer_state(est.model_fn, est.config, run.model, run.train_input,
                                                    config.checkpoint_dir, first_step)

        eval_spec = tf.estimator.EvalSpec(
            run.eval_input, steps=config.eval_steps, name=None, hooks=[hooks.EvaluationStopHook()],
            exporters=estimator.make_exporters(config, self._serving_fn, run.dataset.class_names, run.cache),
            start_delay_secs=0, throttle_secs=config.eval_throttle_secs)
        if self._single:
            # Before the phase starts: at a boundary, or on a resume with another recipe, the start rewrites the
            # checkpoint an interruption left unevaluated (a fresh optimizer state: under --ema_decay, without the
            # averages the evaluation serves).
            record_faults.train_skipping_bad_records(lambda: exporters.catch_up(  # As if never interrupted.
                est, eval_spec, config.checkpoint_dir, step.first_step, config.save_checkpoints_steps),
                run.dataset, config)
        phases.start(config, plan, rewrite, run.model, step, run.run_info, run.info_path)
        progress_hook = progress.ProgressHook(step.phase.last_step, config.batch_size, summarize=plan.name != "tpu",
                                              learning_rate=schedule)
        train_hooks = [progress_hook, hooks.PreemptionHook(config.checkpoint_dir, plan.is_chief, plan.distributed)]
        if config.early_stopping_patience:
            train_hooks.append(hooks.StopHook(config.model_dir))
        train_spec = tf.estimator.TrainSpec(run.train_input, max_steps=step.phase.last_step, hooks=train_hooks,
                                            saving_listeners=listeners.make_listeners(config, plan))
        self._specs = (train_spec, eval_spec, progress_hook)
        console.say("phase %s: steps %d..%d, %d trainable params, learning rate %g (%s)", step.phase.name,
                    step.first_step, step.phase.last_step, models.summarize(run.model)["trainable_params"],
                    step.phase.learning_rate, config.lr_schedule)
        return self._single

    def train_phase(self, run, step: phases.Step, schedule) -> Optional[dict]:
        """train_and_evaluate to the phase's last step; the final evaluation (None when another task evaluates)."""
        train_spec, eval_spec, progress_hook = self._specs
        return record_faults.train_skipping_bad_records(  # Resumes without bad TFRecords met in training.
            lambda: estimator.train(self.estimator, train_spec, eval_spec, progress_hook), run.dataset, self.config)

    # ---- finish -----------------------------------------------------------------------------------------
    def final_evaluation(self, run, eval_metrics: Optional[dict]) -> dict:
        config = self.config
        if self.estimator is None:  # Nothing left to train (finished, or stopped early before a restart).
            models.compile_model(run.model, config)
            self.estimator = self._build(run)
        if not eval_metrics and self._single:
            # Killed during the final evaluation or export: do them now, as the run that was never interrupted did.
            eval_metrics = self._evaluate_and_export(run)
        if not eval_metrics and self.plan.distributed:
            # The evaluator task decides the served model: its verdict first (or, gone, the chief's as its own).
            latest = tf.train.latest_checkpoint(config.checkpoint_dir)
            if latest and evaluations.await_verdict(config.checkpoint_dir, int(latest.rsplit("-", 1)[1])) is False:
                eval_metrics = self._evaluate_and_export(run, interrupted=False)
        if not eval_metrics:  # Distributed (evaluation belongs to the evaluator task), or nothing left to train.
            eval_metrics = self.estimator.evaluate(run.eval_input, steps=config.eval_steps, name="chief_final")
        return eval_metrics

    def _evaluate_and_export(self, run, interrupted: bool = True) -> Optional[dict]:
        """The final checkpoint's evaluation and what follows it (the exports, the best record), unless it is on
        record (None then). `interrupted`: a rerun catching up, which the console says (not a chief deciding for an
        evaluator task that is gone: that is said already)."""
        config = self.config
        final_spec = tf.estimator.EvalSpec(run.eval_input, steps=config.eval_steps, name=None,
                                           exporters=estimator.make_exporters(
                                               config, self._serving_fn, run.dataset.class_names, run.cache))
        return record_faults.train_skipping_bad_records(lambda: exporters.catch_up(
            self.estimator, final_spec, config.checkpoint_dir, run.planned[-1].last_step,
            config.save_checkpoints_steps, final=True, announce=interrupted), run.dataset, config)

    def export(self, run, checkpoint: str, root: Optional[str] = None) -> str:
        """A SavedModel of `checkpoint` (no exporter ran here: distributed without an evaluator; or the calibrated
        weights)."""
        root = root or os.path.join(self.config.checkpoint_dir, "export", self.config.export)
        return exporters.export_apart(lambda: (run.cache.exporter if run.cache else self.estimator).export_saved_model(
            root, self._serving_fn, checkpoint_path=checkpoint))

    def predictions(self, run, checkpoint: str):
        """A cached run's head on the cached validation features; None elsewhere (the report predicts)."""
        if not run.cache:
            return None
        return estimator_predict.predict_with_estimator(self.estimator, run.eval_input, self.config.label_mode,
                                                        checkpoint, self.config.eval_steps)

    def end_training(self) -> None:
        """Each train_and_evaluate ends its own listeners; a worker of a collective strategy removes the
        checkpoints it wrote to tmp_worker_<index>."""
        if not self.plan.is_chief:
            estimator.remove_worker_clutter(self.config.checkpoint_dir, self.plan)
