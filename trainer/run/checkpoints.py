"""The checkpoint a run resumes from, healed when the latest one or the `checkpoint` state file is damaged.

A preempted job is rerun with the same command, so a damaged latest checkpoint (a disk that filled up, a
copy cut short) would fail every restart the same way, and a missing or garbage state file would make the
Estimator start again at step 0 and overwrite the checkpoints beside it. `recover` reads each candidate
whole (the bundle's own checksums catch truncated or altered data), newest first, and points the state file
at the newest readable one, with a warning naming what was skipped.
"""
import os
import re
import time
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
    except Exception as e:  # noqa: BLE001 - OpError, ValueError, IndexError ("Read less bytes"): all unreadable.
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    return None


def _named_in_state(checkpoint_dir: str) -> Tuple[Optional[str], str]:
    """(the checkpoint the state file names, what is wrong with the state file: "" when nothing, else
    "missing", "damaged" or "names a missing checkpoint")."""
    if not tf.io.gfile.exists(os.path.join(checkpoint_dir, "checkpoint")):
        return None, "missing"
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except Exception:  # noqa: BLE001 - a text-proto parse error of any kind: the file is damaged.
        return None, "damaged"
    if state is None or not state.model_checkpoint_path:
        return None, "damaged"
    named = _normal(state.model_checkpoint_path)  # Joined to the folder by TensorFlow when relative.
    if not tf.io.gfile.exists(named + ".index"):
        # A folder moved or copied after an older version (or the Estimator's Saver) recorded absolute paths:
        # the same name in this folder is the checkpoint meant.
        here = _normal(os.path.join(checkpoint_dir, os.path.basename(named)))
        if tf.io.gfile.exists(here + ".index"):
            return here, "moved"
        return named, "names a missing checkpoint"
    return named, ""


def _normal(path: str) -> str:
    return path if "://" in path else os.path.normpath(path)


def recover(checkpoint_dir: str) -> Optional[str]:
    """The checkpoint to resume from (None: start fresh), after healing the state file when needed.

    Raises:
        UsageError: checkpoints exist but none of them can be read.
    """
    named, state_problem = _named_in_state(checkpoint_dir)
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
    if prefix == named and not state_problem:
        return prefix
    if skipped:
        logging.warning("resuming from %s: skipped the damaged %s", os.path.basename(prefix), ", ".join(skipped))
    elif state_problem == "moved":
        logging.info("the checkpoint state file in %s names %s in another folder (moved or copied): resuming from "
                     "the same name here", checkpoint_dir, os.path.basename(prefix))
    else:
        problem = (state_problem if state_problem.startswith("names") else f"is {state_problem}" if state_problem
                   else f"names {os.path.basename(named)} in another folder")
        logging.warning("the checkpoint state file in %s %s: resuming from the newest checkpoint found, %s",
                        checkpoint_dir, problem, os.path.basename(prefix))
    keep = [p for p in reversed([c for _, _, c in candidates]) if p != prefix and not any(
        s.startswith(os.path.basename(p) + " ") for s in skipped)]
    write_state(checkpoint_dir, prefix, keep + [prefix])
    return prefix


def write_state(checkpoint_dir: str, latest: str, all_checkpoints: List[str]) -> None:
    """Writes the `checkpoint` state file (one atomic write) with bare file names, whatever form the folder's path
    takes (relative, absolute, gs://): the folder can be moved or copied and still resume.

    TensorFlow stores the names it is given when the folder's path is absolute, and rewrites them relative to the
    folder when it is not (a bare name given with `runs/x` became `../../model.ckpt-N`, new-user trial #1): so
    bare names are given in the first case and the joined path in the second, and both store the bare name."""
    def given(path: str) -> str:
        name = os.path.basename(path)
        return name if os.path.isabs(checkpoint_dir) else os.path.join(checkpoint_dir, name)

    tf.compat.v1.train.update_checkpoint_state(checkpoint_dir, given(latest),
                                               all_model_checkpoint_paths=[given(p) for p in all_checkpoints])


def rebase_state(checkpoint_dir: str) -> None:
    """A `checkpoint` state file naming absolute paths of another folder (the run folder was moved or copied; an
    older version, or TensorFlow's own Saver, recorded them) is rewritten with this folder's bare names, when the
    same names are here. Read before TensorFlow looks for the checkpoint, which would log an ERROR and start over."""
    if not tf.io.gfile.exists(os.path.join(checkpoint_dir, "checkpoint")):
        return
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
    except Exception:  # noqa: BLE001 - damaged: recover() heals the run's own state file; this one is rewritten.
        return
    if state is None or not state.model_checkpoint_path or tf.io.gfile.exists(state.model_checkpoint_path +
                                                                               ".index"):
        return
    here = os.path.join(checkpoint_dir, os.path.basename(state.model_checkpoint_path))
    if not tf.io.gfile.exists(here + ".index"):
        return
    kept = [os.path.join(checkpoint_dir, os.path.basename(p)) for p in state.all_model_checkpoint_paths]
    write_state(checkpoint_dir, here, [p for p in kept if p != here and tf.io.gfile.exists(p + ".index")] + [here])


def latest_step(checkpoint_dir: str) -> int:
    """The global step of the latest checkpoint (0 without one): where training starts from."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    try:
        return int(latest.rsplit("-", 1)[1]) if latest else 0
    except ValueError:
        return 0


CHIEF_WAIT_SECS = 600


def wait_for_chief(checkpoint_dir: str, marker: str) -> None:
    """A non-chief task of an engine whose tasks start apart: waits (at most CHIEF_WAIT_SECS) until the chief has
    written `marker` (relative to the folder) or a checkpoint, before it reads the phase history."""
    path = os.path.join(checkpoint_dir, marker)
    deadline = time.time() + CHIEF_WAIT_SECS
    while not tf.io.gfile.exists(path) and not tf.train.latest_checkpoint(checkpoint_dir):
        if time.time() > deadline:
            raise RuntimeError(f"the chief wrote no {path} within {CHIEF_WAIT_SECS} s")
        time.sleep(0.5)
