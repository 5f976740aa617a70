"""What runs each time a checkpoint is saved, under either engine: a log line with the throughput since the
last one, the mirror of each new checkpoint to Cloud Storage (--sync_checkpoints_to), and the copy of the event
files to a TensorBoard folder (--tensorboard_dir). Each is called as `after_save(session, step)` and, at the end
of training, `end(session, step)` (the Estimator's saving-listener protocol; `session` is unused)."""
import os
import re
import threading
import time
from typing import List

import tensorflow as tf
from absl import logging

from trainer.util.events import copy_event_files


class CheckpointLogger:
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


SYNC_DEADLINE_SECS = 60.0  # One checkpoint's upload, retries included, before it is given up (one warning).
FINAL_WAIT_SECS = 15.0  # At the end: how long to wait for the final checkpoint while its upload is failing...
FINAL_WAIT_MAX_SECS = 600.0  # ...and while it is making progress (a large checkpoint on a slow link).


class _GiveUp(Exception):
    """An upload abandoned: superseded by a newer checkpoint, or the run is ending."""


class CheckpointSync:
    """Mirrors each new checkpoint from a (fast, local) model_dir to Cloud Storage.

    Uploads go through google-cloud-storage; a `checkpoint` state file naming the uploaded checkpoint is written
    last, so a reader of the mirror never sees it name a checkpoint whose files are not all there.

    With `background=True` (training runs) the uploads never hold up training: a worker thread uploads one
    checkpoint at a time, and when newer checkpoints were saved meanwhile it skips to the newest (a failing
    upload stops retrying as soon as a newer checkpoint waits). Each checkpoint gets `deadline` seconds,
    retries included; a failure is one warning line. At the end of training (`end`) the listener waits for the
    final checkpoint's upload (up to FINAL_WAIT_MAX_SECS while it progresses, FINAL_WAIT_SECS once it fails)
    and says on the console when the final checkpoint could not be synced. With `background=False` each
    upload runs in `after_save` itself.
    """

    def __init__(self, model_dir: str, destination: str, background: bool = False,
                 deadline: float = SYNC_DEADLINE_SECS, final_wait: float = FINAL_WAIT_SECS,
                 final_wait_max: float = FINAL_WAIT_MAX_SECS):
        self._model_dir = model_dir
        self._destination = destination.rstrip("/")
        self._background = background
        self._deadline, self._final_wait, self._final_wait_max = deadline, final_wait, final_wait_max
        self._cond = threading.Condition()
        self._queued = None  # The newest saved step not yet taken by the worker.
        self._busy = None  # The step being uploaded.
        self._failing = False  # The current upload has met an error (it may still succeed on a retry).
        self._last_error = None  # That error.
        self._closing = False
        self._thread = None
        self._last_saved = None
        self._errors = {}  # step -> why its upload failed.
        self.synced = []  # Steps whose files and state file are in the mirror, in order.
        self.skipped = []  # Steps never uploaded: a newer checkpoint was saved before their turn.
        self.uploaded = []  # Relative names, in upload order, for callers and tests.

    def _checkpoint_files(self, step: int) -> List[str]:
        prefix = os.path.join(self._model_dir, f"model.ckpt-{step}")
        return sorted(tf.io.gfile.glob(prefix + ".*"))

    def after_save(self, session, global_step_value):
        step = int(global_step_value)
        self._last_saved = step
        if not self._background:
            self._sync_logged(step)
            return
        with self._cond:
            if self._queued is not None and self._queued != step:
                self.skipped.append(self._queued)
                logging.info("checkpoint sync: step %d skipped, step %d is newer", self._queued, step)
            self._queued = step
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="checkpoint-sync", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def end(self, session, global_step_value):
        final = self._last_saved
        if final is None:
            return
        if not self._background:
            if final not in self.synced:
                self._sync_logged(final)  # One more try.
            return
        started = time.monotonic()
        with self._cond:
            while self._queued is not None or self._busy is not None:
                waited = time.monotonic() - started
                if waited >= self._final_wait_max or (self._failing and waited >= self._final_wait):
                    break
                self._cond.wait(0.2)
            self._closing = True  # The worker stops at its next retry (or before its next upload).
            self._cond.notify_all()
        if final in self.synced:
            logging.info("checkpoint sync: the final checkpoint (step %d) is in %s", final, self._destination)
            return
        why = self._errors.get(final) or (
            f"still failing after {time.monotonic() - started:.0f} s: {self._last_error}" if self._failing else
            f"its upload was still running after {time.monotonic() - started:.0f} s")
        logging.warning("the final checkpoint (step %d) could not be synced to %s (%s); it is only in %s. Copy it "
                        "by hand: gsutil cp %s %s/", final, self._destination, why, self._model_dir,
                        " ".join([os.path.join(self._model_dir, f"model.ckpt-{final}.*"),
                                  os.path.join(self._model_dir, "checkpoint")]), self._destination)

    def sync(self) -> bool:
        """Uploads the latest saved checkpoint now (in the calling thread); True if it went up."""
        return self._last_saved is not None and self._sync_logged(self._last_saved)

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                step, self._queued, self._busy, self._failing = self._queued, None, self._queued, False
            try:
                self._sync_logged(step)
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _sync_logged(self, step: int) -> bool:
        """Uploads one checkpoint; a failure is one warning line (never an exception: mirroring never stops
        training)."""
        try:
            self._sync(step)
            return True
        except Exception as e:  # noqa: BLE001
            with self._cond:
                newer = self._queued
            why = e.args[0] if isinstance(e, _GiveUp) and e.args else _short(e)
            self._errors[step] = why
            if not (isinstance(e, _GiveUp) and self._closing):  # end() reports the final one itself.
                logging.warning("checkpoint sync of step %d to %s failed (%s); %s", step, self._destination, why,
                                f"step {newer} is next" if newer is not None else "the next checkpoint will be tried")
            return False

    def _sync(self, step: int) -> None:
        from trainer.cloud import gcs

        deadline = time.monotonic() + self._deadline
        files = self._checkpoint_files(step)
        if not files:
            raise FileNotFoundError(f"model.ckpt-{step} is no longer in {self._model_dir}")
        for path in files:
            self._retrying(lambda: gcs.upload_once(path, self._uri(path)), deadline)
            self.uploaded.append(os.path.relpath(path, self._model_dir))
        state = os.path.join(self._model_dir, "checkpoint")
        text = self._state_text(step)
        self._retrying(lambda: gcs.upload_text(text, self._uri(state), deadline=0, timeout=(10, 60)), deadline)
        self.uploaded.append("checkpoint")
        self.synced.append(step)

    def _retrying(self, attempt, deadline: float):
        """attempt() until it succeeds; transient errors are retried with backoff until `deadline`, or until
        a newer checkpoint waits, or the run ends (then _GiveUp)."""
        from trainer.cloud import gcs

        delay = 1.0
        while True:
            try:
                return attempt()
            except Exception as e:  # noqa: BLE001
                if not gcs.is_transient(e):
                    raise
                last = _short(e)
                self._failing, self._last_error = True, last
                if time.monotonic() + delay > deadline:
                    raise _GiveUp(f"gave up after {self._deadline:.0f} s of retries; last error {last}") from None
                with self._cond:
                    if self._cond.wait_for(self._superseded, timeout=delay):
                        raise _GiveUp(f"{last}; abandoned for a newer checkpoint" if not self._closing else
                                      f"{last}; the run ended") from None
                delay = min(delay * 2, 8.0)

    def _superseded(self) -> bool:
        return self._background and (self._closing or self._queued is not None)

    def _state_text(self, step: int) -> str:
        """The mirror's `checkpoint` file: this step, after those of the local state already mirrored."""
        names = []
        try:
            local = tf.train.get_checkpoint_state(self._model_dir)
            names = [os.path.basename(p) for p in (local.all_model_checkpoint_paths if local else [])]
        except (tf.errors.OpError, ValueError):
            pass
        synced = {f"model.ckpt-{s}" for s in self.synced}
        kept = [n for n in names if n in synced and n != f"model.ckpt-{step}"] + [f"model.ckpt-{step}"]
        return (f'model_checkpoint_path: "model.ckpt-{step}"\n' +
                "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in kept))

    def _uri(self, path: str) -> str:
        return f"{self._destination}/{os.path.relpath(path, self._model_dir)}"


def _short(error: BaseException) -> str:
    """An error in a few words: a dropped connection's OS reason rather than urllib3's whole chain."""
    text = str(error)
    reason = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|timed out|Name or service not known", text)
    return f"{type(error).__name__}: {reason.group(0) if reason else text.splitlines()[0][:200] if text else ''}"


class TensorBoardCopy:
    """Copies event files to a TensorBoard folder (Vertex AI's $AIP_TENSORBOARD_LOG_DIR) at each checkpoint."""

    def __init__(self, source: str, destination: str):
        self._source, self._destination = source, destination

    def after_save(self, session, global_step_value):
        try:
            copy_event_files(self._source, self._destination)
        except tf.errors.OpError as e:
            logging.warning("copying event files to %s failed (will retry): %s", self._destination, e.message)
