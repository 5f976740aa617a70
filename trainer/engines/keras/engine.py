"""The Keras engine: each phase one Model.fit under the run's tf.distribute strategy, with the Estimator engine's
contract: name-keyed `model.ckpt-<step>` checkpoints on the phase's schedule (trainer.engines.keras.saving), an
evaluation after each followed by trainer.policy.after_evaluation, early stopping, SIGTERM (trainer.run.preemption's
loop policy, as a callback), and resumption from the last saved step, not the last epoch. The loop of
trainer.engines.base.Engine."""
import contextlib
import dataclasses
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.cloud import checkpoint_sync
from trainer.config import Config
from trainer.data import record_faults
from trainer.engines import base
from trainer.engines.keras import callbacks, saving, serving
from trainer.errors import NumericError, UsageError
from trainer.engines.keras.evaluation import Evaluator
from trainer.model import ema, feature_cache, models
from trainer.policy import catch_up
from trainer.policy.after_evaluation import AfterEvaluation
from trainer.outputs import evaluations, export, metrics
from trainer.outputs.predictions import Predictions
from trainer.run import checkpoints, distribution, early_stopping, phases, preemption
from trainer.util import console, faultpoints

_EVALUATOR_POLL_SECS = 1.0


# --steps_per_execution=0: the largest divisor of --save_checkpoints_steps up to this. From the flags alone, so that
# every task of a cluster runs the same windows (their stop agreement is one all-reduce per window); small enough
# that a signal waits at most this many steps (a few seconds on a CPU at 224 px, README "Spot VMs").
AUTO_STEPS_PER_EXECUTION = 10


def steps_per_execution(config: Config) -> int:
    """K: training steps per call into the device. Checkpoints fall on window ends (K divides the interval)."""
    if config.steps_per_execution:
        return config.steps_per_execution
    every = config.save_checkpoints_steps
    return max(k for k in range(1, AUTO_STEPS_PER_EXECUTION + 1) if every % k == 0)


def _refuse_unsupported(config: Config, plan: distribution.Plan) -> None:
    """One error line for what the Keras engine cannot do, before any data is read or model built."""
    if plan.name == "parameter_server":
        raise UsageError("--strategy=parameter_server is not supported by --engine=keras yet (Model.fit needs a "
                         "ClusterCoordinator for it); use --strategy=multi_worker, or --engine=estimator on "
                         "TensorFlow 2.15")
    if config.steps_per_execution and config.save_checkpoints_steps % config.steps_per_execution:
        raise UsageError(f"--steps_per_execution={config.steps_per_execution} must divide --save_checkpoints_steps="
                         f"{config.save_checkpoints_steps} (checkpoints fall where a window of steps ends)")


class Engine(base.Engine):
    name = "keras"
    eager = True
    # Model.fit splits each global batch in order over the replicas; under MultiWorkerMirroredStrategy each task
    # skips the same global stream before it is sharded.
    resumes_input_under = frozenset({"one_device", "mirrored", "multi_worker"})
    # Model.fit keeps its iterators for the whole fit: no Session close to wait for the autotuner's thread.
    autotunes_input = True
    # The chief finishes alone: the cluster's strategy would wait for the tasks that are gone.
    finishes_apart_under = frozenset({"multi_worker"})

    def __init__(self, config: Config, plan: distribution.Plan):
        _refuse_unsupported(config, plan)
        super().__init__(config, plan)
        self.steps_per_execution = steps_per_execution(config)
        self._run = self._evaluator = self._signature = self._signed = None
        self._after_evaluation: Optional[AfterEvaluation] = None
        self._listeners = []
        self._last_eval: Optional[dict] = None

    # ---- prepare ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        return "Keras Model.fit" + (" (TPUStrategy)" if self.plan.strategy is not None and self.plan.name == "tpu"
                                    else "")

    def scope(self, finishing: bool = False):
        """Where the model and its optimizer are built: the strategy's scope (variables mirrored per replica).
        `finishing`: for the chief's last steps, when the other tasks of a cluster are gone (no strategy)."""
        if self.plan.strategy is None or (finishing and self.plan.name == "multi_worker"):
            return contextlib.nullcontext()
        return self.plan.strategy.scope()

    def input_batch_size(self, per_replica: int) -> int:
        """Model.fit splits each batch over the replicas: the training input yields global batches."""
        return per_replica * self.plan.num_replicas

    def prepare_inputs(self, run) -> base.Inputs:
        config = self.config
        self._run = run
        if not config.cache_features:
            return base.Inputs(run.make_input(run.dataset.train, True), run.make_input(run.dataset.validation, False))
        # The head trains and evaluates on the trunk's outputs, computed once here.
        cache = record_faults.train_skipping_bad_records(lambda: feature_cache.compute_all(
            config, run.model, run.dataset, run.make_input, run.run_info,
            lambda: checkpoints.latest_step(config.checkpoint_dir)), run.dataset, config)
        return base.Inputs(cache.train_input, cache.eval_input, cache)

    @staticmethod
    def _served(run) -> tf.keras.Model:
        """The model every export serves: images in (a cached run trains its head, which shares its layers)."""
        return run.full_model if run.cache else run.model

    # ---- phases -----------------------------------------------------------------------------------------
    @property
    def _single(self) -> bool:
        return self.plan.is_chief and not self.plan.distributed

    def _attach(self, run) -> None:
        """The phase's model: its serving signature and evaluator (rebuilt when the phase rebuilt the model)."""
        config = self.config
        if config.jit:
            run.model.jit_compile = True
        image_bytes = run.dataset.kind in ("files", "tfrecord") and not config.model_fn
        served = self._served(run)
        self._signed = served  # The model the signature calls (its variables are the ones it captures).
        self._signature = serving.make_signature(served, run.dataset.class_names, config.label_mode == "binary",
                                                 image_bytes and len(served.outputs) == 1)
        if self._evaluator is not None:
            self._evaluator.close()
        self._evaluator = Evaluator(run.model, run.eval_input, config.eval_steps, config.label_mode,
                                    run.dataset.class_names, config.top_k, config.checkpoint_dir)

    def start_phase(self, run, step: phases.Step, schedule) -> bool:
        config, plan = self.config, self.plan
        self._attach(run)

        def rewrite(first_step: int) -> str:
            return saving.fresh_phase(config.checkpoint_dir, run.model, first_step, config.keep_checkpoint_max)

        if self._single:
            self._catch_up(run, step)
        phases.start(config, plan, rewrite, run.model, step, run.run_info, run.info_path)
        latest = tf.train.latest_checkpoint(config.checkpoint_dir)
        with self.scope():
            if latest:
                saving.restore(run.model, latest)
            else:
                saving.build_optimizer(run.model)
                run.model.optimizer.iterations.assign(0)
        console.say("phase %s: steps %d..%d, %d trainable params, learning rate %g (%s)", step.phase.name,
                    step.first_step, step.phase.last_step, models.summarize(run.model)["trainable_params"],
                    step.phase.learning_rate, config.lr_schedule)
        return bool(self._single and latest)

    def _catch_up(self, run, step: phases.Step) -> None:
        """Evaluates the checkpoint an interruption left unevaluated, as the uninterrupted run did. Before the
        phase starts: at a boundary, or on a resume with another recipe, the start rewrites that checkpoint with a
        fresh optimizer state, and under --ema_decay its averages (what the evaluation serves) would be gone."""
        config = self.config
        latest = tf.train.latest_checkpoint(config.checkpoint_dir)
        at = saving.checkpoint_step(latest) if latest else 0
        if not catch_up.due(at, evaluations.processed_step(config.checkpoint_dir), step.first_step,
                            config.save_checkpoints_steps):
            return
        catch_up.announce(at)
        with self.scope():
            saving.restore(run.model, latest, with_optimizer=False)
            if config.ema_decay:  # The averages in place of the weights just restored.
                export.restore_from_checkpoint(run.model, latest)
        self.evaluate(at, final=at == run.planned[-1].last_step, averaged=True)

    def train_phase(self, run, step: phases.Step, schedule) -> Optional[dict]:
        config, plan = self.config, self.plan
        if plan.is_evaluator:
            return self._evaluate_checkpoints(run, step)
        first = callbacks.global_step(run.model)
        remaining = step.phase.last_step - first
        self._last_eval = None
        if remaining <= 0:
            return None
        steps = callbacks.Steps()  # First: the others read the window's step from it.
        progress = callbacks.Progress(steps, step.phase.last_step, config.batch_size, schedule)
        # Evaluations run here on one process; in a cluster, on its evaluator task (as under the Estimator).
        contract = callbacks.RunContract(self, steps, step.first_step, step.phase.last_step,
                                         config.save_checkpoints_steps, config.eval_throttle_secs,
                                         bool(config.early_stopping_patience), plan.is_chief, plan.distributed,
                                         evaluates=self._single,
                                         strategy=plan.strategy if plan.name == "multi_worker" else None,
                                         window=self.steps_per_execution)
        if not self._listeners:  # One set for the whole run, ended by end_training (SRE trial W5).
            self._listeners = self._make_listeners()
        terminate = tf.keras.callbacks.TerminateOnNaN()
        # From here a signal waits for the end of a step (RunContract), as in training: raised at once, it could land
        # inside Model.fit's C++-called Python (seen: a SIGTERM turned into an AttributeError in nest.flatten).
        with preemption.training():
            record_faults.train_skipping_bad_records(lambda: run.model.fit(
                run.train_input(), epochs=1, steps_per_epoch=remaining, verbose=0,
                callbacks=[steps, progress, callbacks.Summaries(steps, config.checkpoint_dir if plan.is_chief else None,
                                                                progress, schedule), terminate, contract]),
                run.dataset, config)
        if run.model.stop_training and progress.last_loss is not None and not np.isfinite(progress.last_loss):
            raise NumericError(f"the training loss became NaN or infinite at step {callbacks.global_step(run.model)}; "
                               "nothing more was exported or written (try a lower --learning_rate)")
        return self._last_eval

    def _evaluate_checkpoints(self, run, step: phases.Step) -> Optional[dict]:
        """The evaluator task: each new checkpoint of the phase, restored and evaluated (then exported, counted
        by early stopping, ...), until the phase's last step or early stopping's decision."""
        config, evaluated = self.config, None
        self._last_eval = None
        evaluations.start_evaluator_heartbeat(config.checkpoint_dir)
        while True:
            latest = tf.train.latest_checkpoint(config.checkpoint_dir)
            at = saving.checkpoint_step(latest) if latest else -1
            if latest and at > step.first_step and at != evaluated and at <= step.phase.last_step:
                if evaluated is not None and at - evaluated > config.save_checkpoints_steps:
                    # It evaluates the newest checkpoint each time it is free (as the Estimator's evaluator does).
                    logging.info("evaluator: step %d is the newest checkpoint; those saved since step %d while it "
                                 "was evaluating are not evaluated", at, evaluated)
                faultpoints.delay("evaluator_before_evaluation")
                saving.restore(run.model, latest, with_optimizer=False)
                if config.ema_decay:  # The averages in place of the weights just restored.
                    export.restore_from_checkpoint(run.model, latest)
                self.evaluate(at, final=at == run.planned[-1].last_step, averaged=True)
                evaluated = at
            if at >= step.phase.last_step or (config.early_stopping_patience and
                                              early_stopping.stopped_at(config.model_dir) is not None):
                return self._last_eval
            time.sleep(_EVALUATOR_POLL_SECS)

    def end_training(self) -> None:
        """After the last phase this process trains (also when a stop decided elsewhere skipped the rest): the
        checkpoint listeners' end, once (the final checkpoint's upload is waited for)."""
        for listener in self._listeners:
            if hasattr(listener, "end"):
                listener.end(None, callbacks.global_step(self._run.model) if self._run else 0)
        self._listeners = []

    def _make_listeners(self):
        config = self.config
        if not self.plan.is_chief:
            return []
        made = [checkpoint_sync.CheckpointLogger(config.batch_size)]
        if config.tensorboard_dir:
            made.append(checkpoint_sync.TensorBoardCopy(config.checkpoint_dir, config.tensorboard_dir))
        if config.sync_checkpoints_to:
            made.append(checkpoint_sync.CheckpointSync(config.checkpoint_dir, config.sync_checkpoints_to,
                                                       background=True))
        return made

    # ---- what each checkpoint and evaluation does (called by callbacks.RunContract) -------------------------
    def save(self, step: int) -> None:
        if not self.plan.is_chief:
            return
        saving.save(self._run.model, step, self.config.checkpoint_dir, self.config.keep_checkpoint_max)
        faultpoints.reached("checkpoint_saved")  # Before its evaluation.
        for listener in self._listeners:
            listener.after_save(None, step)

    def evaluate(self, step: int, final: bool = False, averaged: bool = False) -> dict:
        """Evaluates the model as it is (the weights of `step`), then what follows every evaluation
        (trainer.policy.after_evaluation), exporting the served model with the phase's signature. Under
        --ema_decay the optimizer's averages are swapped in for it, unless the weights are `averaged` already (restored
        from a checkpoint's averages: the evaluator task's optimizer slots are not this checkpoint's)."""
        config, run = self.config, self._run
        final = final or step == run.planned[-1].last_step

        def export_fn(root: str, keep: Optional[int]) -> str:
            return serving.export(self._served(run), self._signature, root, keep, run.dataset.class_names)

        if self._after_evaluation is None:
            self._after_evaluation = AfterEvaluation(config, run.dataset.class_names)
        with contextlib.nullcontext() if averaged else ema.swapped(run.model):  # --ema_decay: the averages.
            result = record_faults.train_skipping_bad_records(lambda: self._evaluator.evaluate(step), run.dataset,
                                                              config)
            self._after_evaluation(result, final, export_fn,
                                   lambda: all(np.all(np.isfinite(w.numpy())) for w in run.model.weights))
        self._last_eval = result
        if final:
            faultpoints.reached("final_step_evaluated")  # Inside the last step's callback: a signal only sets a flag.
        return result

    # ---- finish -----------------------------------------------------------------------------------------
    def final_evaluation(self, run, eval_metrics: Optional[dict]) -> dict:
        if eval_metrics:
            return eval_metrics
        config = self.config
        self._run = run
        latest = tf.train.latest_checkpoint(config.checkpoint_dir)
        if self.plan.name in self.finishes_apart_under:
            # The other tasks are gone: the model of the cluster's strategy would wait for them in every read of
            # a sync-on-read variable. The stage rebuilt it outside the strategy; the trained weights come next.
            self.plan = dataclasses.replace(self.plan, strategy=None)
        with self.scope():
            models.compile_model(run.model, config)
        self._attach(run)
        at = saving.restore(run.model, latest, with_optimizer=False)
        if config.ema_decay:  # The averages in place of the weights just restored.
            export.restore_from_checkpoint(run.model, latest)
        done = evaluations.processed_step(config.checkpoint_dir)
        if self._single and (done is None or done < at):  # Killed during the final evaluation or export.
            return self.evaluate(at, final=True, averaged=True)
        if self.plan.distributed:  # The evaluator task decides the served model: its verdict first.
            verdict = evaluations.await_verdict(config.checkpoint_dir, at)
            if verdict is False:
                return self.evaluate(at, final=True, averaged=True)
            done = evaluations.processed_step(config.checkpoint_dir)
        if done is not None and done >= at:  # On record already (eval/): no eval_chief_final/ (wrappers trial U11).
            return self._evaluator.evaluate(at, write=False)
        return self._evaluator.evaluate(at, name="chief_final")

    def export(self, run, checkpoint: str, root: Optional[str] = None) -> str:
        """A SavedModel of `checkpoint` (no evaluation exported one; or the calibrated weights)."""
        export.restore_from_checkpoint(run.model, checkpoint)
        if self._signature is None or self._signed is not self._served(run):
            # Nothing trained in this process; or the stages built the model anew since (early stopping decided
            # before the next phase, whose model was already built, not compiled): a signature of that model.
            if getattr(run.model, "optimizer", None) is None:
                with self.scope():
                    models.compile_model(run.model, self.config)
            self._attach(run)
        root = root or os.path.join(self.config.checkpoint_dir, "export", self.config.export)
        return serving.export(self._served(run), self._signature, root, class_names=run.dataset.class_names)

    def predictions(self, run, checkpoint: str):
        """A cached run's head (run.model) on the cached validation features, with no trunk pass."""
        if not run.cache:
            return None
        export.restore_from_checkpoint(run.model, checkpoint)
        probabilities, ids = metrics.predict_split(run.model, run.eval_input, self.config.label_mode)
        if probabilities.shape[-1] == 1:  # A binary model's one sigmoid: both classes' probabilities.
            probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=-1)
        return Predictions(ids, probabilities.astype(np.float64)) if len(ids) else None
