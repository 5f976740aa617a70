"""SessionRunHooks and model_fn wrappers of the Estimator engine: preemption (SIGTERM saves a checkpoint),
early stopping's stop, checkpoints on the phase's schedule, the learning_rate scalar."""
import os

import tensorflow as tf

from trainer.model.schedules import PhaseSchedule
from trainer.run.early_stopping import stopped_at
from trainer.run import preemption
from trainer.util import faultpoints


class PreemptionHook(tf.estimator.SessionRunHook):
    """Saves a checkpoint and raises Preempted after the step during which SIGTERM arrived
    (trainer.run.preemption's loop policy, adapted to a session)."""

    def __init__(self, checkpoint_dir: str, is_chief: bool = True, multi_process: bool = False):
        self._checkpoint_dir = checkpoint_dir
        self._is_chief = is_chief
        self._multi_process = multi_process

    def begin(self):
        self._global_step = tf.compat.v1.train.get_or_create_global_step()

    def after_create_session(self, session, coord):
        # After TensorFlow's coordination service (multi-worker) took SIGTERM.
        preemption.training_begins(self._multi_process, lambda: int(session.run(self._global_step)))

    def after_run(self, run_context, run_values):
        if not preemption.requested():
            return
        session = run_context.session

        def save(step: int) -> bool:
            savers = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVERS)
            if savers:
                savers[0].save(session, os.path.join(self._checkpoint_dir, "model.ckpt"), global_step=step)
            return bool(savers)

        preemption.preempt_after_step(int(session.run(self._global_step)), save if self._is_chief else None)

    def end(self, session):
        preemption.training_ends()


class EvaluationStopHook(tf.estimator.SessionRunHook):
    """After each evaluation batch: a signal that arrived during an evaluation inside training (where it only set
    the flag) stops it; the checkpoint it evaluates is on disk (issue 36)."""

    def begin(self):
        self._global_step, self._step = tf.compat.v1.train.get_global_step(), None
        faultpoints.delay("evaluator_before_evaluation")  # Tests: a slow evaluator task (tests/test_evaluator_verdict.py).

    def after_create_session(self, session, coord):
        # The evaluated checkpoint's step, read once (it is restored by now): no fetch on every batch.
        if self._global_step is not None:
            self._step = int(session.run(self._global_step))

    def after_run(self, run_context, run_values):
        faultpoints.reached("evaluation_batch")
        preemption.stop_evaluating_if_requested(self._step)


class StopHook(tf.estimator.SessionRunHook):
    """Requests a stop once the watcher has decided (checked every few steps; the file may be remote)."""

    def __init__(self, model_dir: str, every_steps: int = 10):
        self._model_dir, self._every = model_dir, every_steps

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        # At global steps (not steps since this process started): a restarted run stops where an uninterrupted one does.
        if int(run_values.results) % self._every == 0 and stopped_at(self._model_dir) is not None:
            run_context.request_stop()


class AlignedSaverHook(tf.compat.v1.train.CheckpointSaverHook):
    """The Estimator's checkpoint saver, with its schedule counted from the phase's first step.

    A preemption checkpoint (SIGTERM) lands at any step S; the Estimator's own saver would then save at S + N,
    S + 2N, ... and evaluate there, where the uninterrupted run saved and evaluated at first_step + kN: early
    stopping and the best export would see other evaluations. After the restore, this saver's next save is
    the next step of the uninterrupted schedule.
    """

    def __init__(self, checkpoint_dir: str, save_steps: int, first_step: int, **kwargs):
        super().__init__(checkpoint_dir, save_steps=save_steps, **kwargs)
        self._first_step, self._every = first_step, save_steps

    def after_create_session(self, session, coord):
        super().after_create_session(session, coord)
        step = int(session.run(self._global_step_tensor))
        self._timer.update_last_triggered_step(scheduled_before(step, self._first_step, self._every))



def scheduled_before(step: int, first_step: int, every: int) -> int:
    """The last step at or before `step` on the schedule first_step + k x every."""
    return first_step + max(0, (step - first_step) // every) * every



def with_aligned_saver(model_fn, first_step: int):
    """Wraps a model_fn: training (on the chief) saves with an AlignedSaverHook instead of the Estimator's own."""

    def wrapped(features, labels, mode, config):
        spec = model_fn(features, labels, mode, config)
        if mode != tf.estimator.ModeKeys.TRAIN or not config.save_checkpoints_steps:
            return spec
        hook = AlignedSaverHook(config.model_dir, config.save_checkpoints_steps, first_step, scaffold=spec.scaffold,
                                save_graph_def=config.checkpoint_save_graph_def)
        return spec._replace(training_chief_hooks=list(spec.training_chief_hooks) + [hook])

    return wrapped


def with_learning_rate_summary(model_fn, schedule: PhaseSchedule):
    """Wraps a model_fn: training writes the `learning_rate` scalar (every summary step) to TensorBoard."""

    def wrapped(features, labels, mode, config):
        spec = model_fn(features, labels, mode, config)
        if mode == tf.estimator.ModeKeys.TRAIN:
            tf.compat.v1.summary.scalar("learning_rate", schedule(tf.compat.v1.train.get_global_step()))
        return spec

    return wrapped
