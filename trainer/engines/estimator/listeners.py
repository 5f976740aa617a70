"""Checkpoint saving listeners: code that runs each time the Estimator saves.

`make_listeners(config)` is the one place that decides which listeners a run
gets; add a new one by writing a `CheckpointSaverListener` subclass here (or in
its own module) and appending it there.
"""
import os
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
        logging.warning("saving listeners are not supported under MultiWorkerMirroredStrategy: "
                        "checkpoints are not logged%s in this run",
                        " and --sync_checkpoints_to is ignored" if config.sync_checkpoints_to else "")
        return []
    result = [CheckpointLogger(config.batch_size)]
    if config.tensorboard_dir:
        result.append(TensorBoardCopy(config.checkpoint_dir or config.model_dir, config.tensorboard_dir))
    if config.sync_checkpoints_to:
        result.append(CheckpointSync(config.checkpoint_dir or config.model_dir, config.sync_checkpoints_to))
    return result


class CheckpointSync(tf.estimator.CheckpointSaverListener):
    """Mirrors each new checkpoint from a (fast, local) model_dir to Cloud Storage.

    Uploads go through google-cloud-storage with retries; the `checkpoint` state file is
    uploaded last, so a reader of the mirror never sees it name a checkpoint whose files
    are not all there. A failure that outlasts the retries is logged and the files are
    tried again at the next checkpoint: mirroring never stops training.
    """

    def __init__(self, model_dir: str, destination: str):
        self._model_dir = model_dir
        self._destination = destination.rstrip("/")
        self._pending = set()
        self.uploaded = []  # Relative names, in upload order, for callers and tests.

    def _checkpoint_files(self, step: int) -> List[str]:
        prefix = os.path.join(self._model_dir, f"model.ckpt-{step}")
        return sorted(tf.io.gfile.glob(prefix + ".*"))

    def after_save(self, session, global_step_value):
        self._pending.update(self._checkpoint_files(global_step_value))
        self.sync()

    def end(self, session, global_step_value):
        self.sync()

    def sync(self) -> bool:
        """Uploads pending checkpoint files, then the state file; True if all went up."""
        from trainer.cloud import gcs

        try:
            for path in sorted(self._pending):
                gcs.upload(path, self._uri(path))
                self._pending.discard(path)
                self.uploaded.append(os.path.relpath(path, self._model_dir))
            state = os.path.join(self._model_dir, "checkpoint")
            if tf.io.gfile.exists(state):
                gcs.upload(state, self._uri(state))
                self.uploaded.append("checkpoint")
            return True
        except Exception as e:  # Never let mirroring kill training; retry at the next save.
            logging.warning("checkpoint sync to %s failed, will retry at the next checkpoint: %s: %s",
                            self._destination, type(e).__name__, str(e)[:200])
            return False

    def _uri(self, path: str) -> str:
        return f"{self._destination}/{os.path.relpath(path, self._model_dir)}"


def copy_event_files(source: str, destination: str) -> int:
    """Copies TensorBoard event files (source/ and its eval*/ folders) to `destination`."""
    copied = 0
    for pattern in ("events.out.tfevents.*", "eval*/events.out.tfevents.*"):
        for path in tf.io.gfile.glob(os.path.join(source, pattern)):
            target = os.path.join(destination, os.path.relpath(path, source))
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(path, target, overwrite=True)
            copied += 1
    return copied


class TensorBoardCopy(tf.estimator.CheckpointSaverListener):
    """Copies event files to a TensorBoard folder (Vertex AI's $AIP_TENSORBOARD_LOG_DIR) at each checkpoint."""

    def __init__(self, source: str, destination: str):
        self._source, self._destination = source, destination

    def after_save(self, session, global_step_value):
        try:
            copy_event_files(self._source, self._destination)
        except tf.errors.OpError as e:
            logging.warning("copying event files to %s failed (will retry): %s", self._destination, e.message)
