"""The checkpoint a run resumes from, healed when the latest one or the `checkpoint` state file is damaged.

A preempted job is rerun with the same command, so a damaged latest checkpoint (a disk that filled up, a
copy cut short) would fail every restart the same way, and a missing or garbage state file would make the
Estimator start again at step 0 and overwrite the checkpoints beside it. `recover` reads each candidate
whole (the bundle's own checksums catch truncated or altered data), newest first, and points the state file
at the newest readable one, with a warning naming what was skipped.
"""
import os
import re
from typing import List, Optional, Tuple

import tensorflow as tf
from absl import logging

from trainer.errors import UsageError

_PREFIX = re.compile(r"^(model|phase)\.ckpt-(\d+)$")


def _candidates(checkpoint_dir: str) -> List[Tuple[int, float, str]]:
    """(step, mtime, prefix) of every checkpoint in the folder, newest first."""
    found = []
    for index in tf.io.gfile.glob(os.path.join(checkpoint_dir, "*.ckpt-*.index")):
        prefix = _normal(index[:-len(".index")])
        match = _PREFIX.match(os.path.basename(prefix))
        if match:
            try:
                mtime = tf.io.gfile.stat(index).mtime_nsec
            except tf.errors.OpError:
                mtime = 0
            found.append((int(match.group(2)), mtime, prefix))
    return sorted(found, reverse=True)


def readable(prefix: str) -> Optional[str]:
    """None when every tensor of the checkpoint reads back (checksums included), else what failed."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    return None


def _named_in_state(checkpoint_dir: str) -> Tuple[Optional[str], bool]:
    """(the checkpoint the state file names, whether the state file is damaged)."""
    if not tf.io.gfile.exists(os.path.join(checkpoint_dir, "checkpoint")):
        return None, False
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except Exception:  # noqa: BLE001 - a text-proto parse error of any kind: the file is damaged.
        return None, True
    if state is None or not state.model_checkpoint_path:
        return None, True
    return _normal(state.model_checkpoint_path), False  # Made relative to the folder by TensorFlow already.


def _normal(path: str) -> str:
    return path if "://" in path else os.path.normpath(path)


def recover(checkpoint_dir: str) -> Optional[str]:
    """The checkpoint to resume from (None: start fresh), after healing the state file when needed.

    Raises:
        UsageError: checkpoints exist but none of them can be read.
    """
    named, damaged_state = _named_in_state(checkpoint_dir)
    candidates = _candidates(checkpoint_dir)
    if not candidates:
        return None
    order = [p for _, _, p in candidates]
    if named in order:  # The state file's choice first (a newer file may be one whose save was cut short).
        order.remove(named)
        order.insert(0, named)
    skipped = []
    for prefix in order:
        problem = readable(prefix)
        if problem is None:
            break
        skipped.append(f"{os.path.basename(prefix)} ({problem})")
    else:
        raise UsageError(f"no checkpoint in {checkpoint_dir} can be read ({'; '.join(skipped)}); move the "
                         "model.ckpt-* files away to start over, or use a new --model_dir")
    if prefix == named and not damaged_state:
        return prefix
    if skipped:
        logging.warning("resuming from %s: skipped the damaged %s", os.path.basename(prefix), ", ".join(skipped))
    else:
        logging.warning("the checkpoint state file in %s is %s: resuming from the newest checkpoint found, %s",
                        checkpoint_dir, "damaged" if damaged_state else "missing", os.path.basename(prefix))
    keep = [p for p in reversed([c for _, _, c in candidates]) if p != prefix and not any(
        s.startswith(os.path.basename(p) + " ") for s in skipped)]
    tf.compat.v1.train.update_checkpoint_state(checkpoint_dir, prefix, all_model_checkpoint_paths=keep + [prefix])
    return prefix


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
