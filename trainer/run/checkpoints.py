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


