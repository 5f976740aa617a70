"""A training hook that logs progress a person can watch: step, speed, ETA."""
import time

import tensorflow as tf
from absl import logging


class ProgressHook(tf.estimator.SessionRunHook):
    """Logs `step N/M (p%), x steps/s, y examples/s, ETA h:mm:ss` every few seconds."""

    def __init__(self, max_steps: int, batch_size: int, every_secs: float = 10.0, learning_rate=None):
        self._learning_rate = learning_rate  # A schedules.PhaseSchedule, shown in each line.
        self._max_steps = max_steps
        self._batch_size = batch_size
        self._every_secs = every_secs

    last_step = 0  # The last global step seen, for error messages.

    def begin(self):
        self._global_step = tf.compat.v1.train.get_or_create_global_step()
        self._last = None  # (step, time) of the last line.

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        step, now = int(run_values.results) + 1, time.time()
        self.last_step = step
        if self._last is None:
            self._last = (step, now)  # The first step includes graph warm-up: not timed.
            return
        last_step, last_time = self._last
        if now - last_time < self._every_secs and step < self._max_steps:
            return
        rate = (step - last_step) / max(now - last_time, 1e-9)
        eta = (self._max_steps - step) / rate if rate > 0 else 0.0
        lr = f", learning rate {self._learning_rate.value(step):.3g}" if self._learning_rate is not None else ""
        logging.info("step %d/%d (%.0f%%), %.1f steps/s, %.0f examples/s%s, ETA %s", step, self._max_steps,
                     100.0 * step / self._max_steps, rate, rate * self._batch_size, lr,
                     time.strftime("%H:%M:%S", time.gmtime(eta)))
        self._last = (step, now)
