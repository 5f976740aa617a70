"""Checkpoint saving listeners: code that runs each time the Estimator saves.

`make_listeners(config)` is the one place that decides which listeners a run
gets; add a new one by writing a `CheckpointSaverListener` subclass here (or in
its own module) and appending it there.
"""
import time
from typing import List

import tensorflow as tf
from absl import logging

from trainer.config import Config


class CheckpointLogger(tf.estimator.CheckpointSaverListener):
    """Logs every checkpoint with its step, wall time and throughput since the last one."""

    def __init__(self, batch_size: int):
        self._batch_size = batch_size
        self._last_step = None
        self._last_time = None
        self.saved = []  # (step, unix time) of each checkpoint, for callers and tests.

    def after_save(self, session, global_step_value):
        now = time.time()
        rate = ""
        if self._last_step is not None and global_step_value > self._last_step:
            steps_per_sec = (global_step_value - self._last_step) / max(now - self._last_time, 1e-9)
            rate = f", {steps_per_sec:.1f} steps/s, {steps_per_sec * self._batch_size:.0f} examples/s since last"
        logging.info("checkpoint saved at step %d (%s)%s", global_step_value,
                     time.strftime("%H:%M:%S", time.localtime(now)), rate)
        self.saved.append((int(global_step_value), now))
        self._last_step, self._last_time = global_step_value, now


def make_listeners(config: Config, plan=None) -> List[tf.estimator.CheckpointSaverListener]:
    """The saving listeners for this run.

    Estimator refuses saving listeners under collective multi-worker strategies, so none
    are attached there (the run logs that it did without them).
    """
    if plan is not None and plan.name == "multi_worker":
        logging.info("saving listeners are not supported under MultiWorkerMirroredStrategy: "
                     "checkpoints are not logged or mirrored by listeners in this run")
        return []
    return [CheckpointLogger(config.batch_size)]
