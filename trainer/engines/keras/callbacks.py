"""Model.fit callbacks of the Keras engine: the progress line, the training scalars for TensorBoard, and the
loop of the run's contract: SIGTERM saves and stops, checkpoints on the phase's schedule (counted from its first
step, as the Estimator engine's aligned saver), each followed by its evaluation, and early stopping's stop.

Model.fit runs K training steps per call into the device (--steps_per_execution) and calls these callbacks once
per window of K steps, with `batch` the index of the window's last step in this fit. They count the global step
from that index (the optimizer's step counter is read once, when fit begins), so the host never waits for the
device to learn the step; the loss (a float) is read once per window, where the device has finished it anyway.
"""
import math
import time

import tensorflow as tf

from trainer.policy.progress import ProgressLine
from trainer.run import early_stopping, preemption
from trainer.util import console


def global_step(model: tf.keras.Model) -> int:
    """The optimizer's step counter (a read that waits for the device): outside the step loop only."""
    return int(model.optimizer.iterations.numpy())


def crossed(before: int, after: int, every: int, origin: int = 0) -> bool:
    """True when a window of steps (before, after] holds a step origin + k x every (k >= 1)."""
    return bool(every) and (after - origin) // every > (before - origin) // every


class Steps(tf.keras.callbacks.Callback):
    """The global step at the end of each window, from fit's batch index (no device read)."""

    def on_train_begin(self, logs=None):
        self.start = self.step = global_step(self.model)

    def on_train_batch_end(self, batch, logs=None):
        self.before, self.step = self.step, self.start + batch + 1


class Progress(tf.keras.callbacks.Callback):
    """The progress line (trainer.policy.progress) after each window; the loss is the window's own mean (recovered
    from fit's running mean)."""

    def __init__(self, steps: Steps, max_steps: int, batch_size: int, schedule=None, every_secs: float = 10.0):
        super().__init__()
        self._steps, self._args = steps, (max_steps, batch_size, schedule, every_secs)
        self.last_loss = None

    def on_train_begin(self, logs=None):
        self._line, self._mean = ProgressLine(*self._args), (0, 0.0)

    def on_train_batch_end(self, batch, logs=None):
        count, mean = batch + 1, float((logs or {}).get("loss", float("nan")))
        before, before_mean = self._mean
        self.last_loss = (count * mean - before * before_mean) / max(count - before, 1)
        self._mean = (count, mean)
        self._line.step_done(self._steps.step, loss=self.last_loss)


class Summaries(tf.keras.callbacks.Callback):
    """`loss`, `learning_rate` and `global_step/sec` every `every` steps, in the checkpoint folder (the
    Estimator's scalar names and place)."""

    def __init__(self, steps: Steps, folder: str, progress: Progress, schedule=None, every: int = 100):
        super().__init__()
        self._steps, self._folder, self._progress, self._schedule, self._every = steps, folder, progress, schedule, every
        self._writer, self._last = None, None

    def on_train_batch_end(self, batch, logs=None):
        step = self._steps.step
        # Also at the end of the first window of each fit (each phase, each restart), as the Estimator's summary
        # saver does at its first step.
        if self._folder is None or not (self._steps.before == self._steps.start or
                                        crossed(self._steps.before, step, self._every)):
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._folder)
        now = time.time()
        with self._writer.as_default():
            if self._progress.last_loss is not None:
                tf.summary.scalar("loss", self._progress.last_loss, step=step)
            if self._schedule is not None:
                tf.summary.scalar("learning_rate", self._schedule.value(step - 1), step=step)
            if self._last is not None and step > self._last[0]:
                tf.summary.scalar("global_step/sec", (step - self._last[0]) / max(now - self._last[1], 1e-9),
                                  step=step)
        self._last = (step, now)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunContract(tf.keras.callbacks.Callback):
    """After each window of steps: SIGTERM (or Ctrl-C) saves a checkpoint and raises Preempted; on the schedule
    first_step + k x every (and at the phase's last step) `save(step)`, then (`evaluates`) `evaluate(step)`
    unless throttled; a stop once early stopping has decided.

    Windows end on the schedule's steps (K divides the interval) when the fit starts on a window boundary of the
    phase. A resume from a checkpoint off that grid (saved with another --steps_per_execution) saves at the first
    window end past each scheduled step instead, and says so.

    Under MultiWorkerMirroredStrategy (`strategy`) every task must stop at the same step, or the others wait
    in the next step's all-reduce forever: after each window, the tasks sum their stop requests (a signal received,
    early stopping decided, read every 10 steps as the Estimator engine's StopHook does) in one all-reduce.
    """

    def __init__(self, engine, steps: Steps, first_step: int, last_step: int, every: int, throttle_secs: float,
                 stops: bool, is_chief: bool, multi_process: bool, evaluates: bool = True, strategy=None,
                 window: int = 1):
        super().__init__()
        self._engine, self._steps, self._first, self._last_step = engine, steps, first_step, last_step
        self._every, self._throttle, self._stops, self._is_chief = every, throttle_secs, stops, is_chief
        self._multi, self._evaluates, self._strategy, self._window = multi_process, evaluates, strategy, window
        self._evaluated_at = None

    def on_train_begin(self, logs=None):
        start = self._steps.start
        if self._window > 1 and (start - self._first) % self._window:
            console.say("resuming at step %d, off the %d-step windows of this phase (from step %d; saved with another "
                        "--steps_per_execution): until the phase ends, each checkpoint falls at the first window end "
                        "past its scheduled step", start, self._window, self._first)
        preemption.training_begins(self._multi, lambda: global_step(self.model))

    def on_train_end(self, logs=None):
        preemption.training_ends()

    def on_train_batch_end(self, batch, logs=None):
        before, step = self._steps.before, self._steps.step
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return  # TerminateOnNaN stops; the last checkpoint stays the last finite one (as under the Estimator).
        if self._strategy is not None:
            self._multi_worker_step(before, step)
            return
        if preemption.requested():
            self._preempted(step)
        if step == self._last_step or crossed(before, step, self._every, self._first):
            self._engine.save(step)
            now = time.time()
            if self._evaluates and (step == self._last_step or self._evaluated_at is None or
                                    now - self._evaluated_at >= self._throttle):
                self._evaluated_at = now
                self._engine.evaluate(step)
                if self._stops and early_stopping.stopped_at(self._engine.config.model_dir) is not None:
                    self.model.stop_training = True

    def _multi_worker_step(self, before: int, step: int) -> None:
        stop = bool(self._stops and crossed(before, step, 10) and
                    early_stopping.stopped_at(self._engine.config.model_dir) is not None)
        preempt, stop = self._all_tasks(float(preemption.requested()), float(stop))
        if preempt:
            self._preempted(step)
        if step == self._last_step or crossed(before, step, self._every, self._first):
            self._engine.save(step)  # The chief only.
        if stop:
            self.model.stop_training = True

    def _all_tasks(self, *flags):
        """Each flag summed over every task of the cluster: one all-reduce."""
        strategy = self._strategy
        mine = tf.constant(flags, tf.float32)
        total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: mine), axis=None)
        return [bool(v > 0) for v in total.numpy()]

    def _preempted(self, step: int) -> None:
        preemption.preempt_after_step(step, self._engine.save if self._is_chief else None)
