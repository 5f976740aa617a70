"""Small file helpers that never leave a half-written file under its final name."""
import json
import os
import re
import uuid
from typing import Any

import tensorflow as tf


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as JSON to `path` atomically (temporary name, then rename).

    Works for local paths and any filesystem TensorFlow knows (gs://).
    """
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin) + "\n")


def write_atomic(path: str, content) -> None:
    """Writes text or bytes to `path` under a temporary name, then renames it; a failed write (a full disk, a
    signal) removes its temporary, also beside outputs outside a model_dir that no next start cleans (SRE W6)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:  # A full disk, a kill: no temporary is left behind where we can help it.
        try:
            tf.io.gfile.remove(tmp)
        except Exception:
            pass
        raise


def read_json(path: str) -> Any:
    """Reads a JSON file, or returns None if it does not exist."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _to_builtin(value: Any) -> Any:
    """Turns numpy scalars and arrays into plain Python values for json."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def makedirs(path: str) -> None:
    """Creates a directory (and parents) on any TF filesystem."""
    tf.io.gfile.makedirs(path)


def ensure_dir(path: str, flag: str) -> None:
    """Creates `path` (a folder named by --flag) or raises UsageError saying why it cannot be used."""
    from trainer.errors import UsageError

    if "://" not in path:
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--{flag}={path} is an existing file, not a folder; name a folder")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--{flag}={path} is not a writable folder ({e.strerror})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--{flag}={path} is not a writable folder (permission denied)")
        return
    try:
        tf.io.gfile.makedirs(path)
    except tf.errors.OpError as e:
        raise UsageError(f"--{flag}={path} cannot be created ({type(e).__name__}: "
                         f"{str(e.message).splitlines()[0][:200]})") from None


def copy_tree(source: str, destination: str) -> str:
    """Copies a folder on any TF filesystem (a SavedModel, say); returns `destination`.

    The copy is assembled under a temporary name and renamed, so a reader never sees
    half a folder (on gs://, where renames are per object, it is copied in place).
    """
    tmp = destination if "://" in destination else f"{destination}.tmp-{uuid.uuid4().hex[:8]}"
    for dirpath, _, filenames in tf.io.gfile.walk(source):
        relative = dirpath[len(source.rstrip("/")):].lstrip("/")
        tf.io.gfile.makedirs(os.path.join(tmp, relative))
        for name in filenames:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(tmp, relative, name), overwrite=True)
    if tmp != destination:
        if tf.io.gfile.exists(destination):
            tf.io.gfile.rmtree(destination)
        tf.io.gfile.rename(tmp, destination)
    return destination


_TF_TEMPORARY = re.compile(r"\.tmp[0-9a-f]{16,}$")  # TensorFlow's own atomic writes (graph.pbtxt.tmp<hex>).


def remove_temporaries(model_dir: str, spare_fresh_exports_secs: float = 0) -> None:
    """Deletes files a killed (or disk-full) run left under temporary names: ours (`*.tmp-*`), TensorFlow's
    (`*.tmp<hex>`), export `temp-*` folders. `spare_fresh_exports_secs`: in a cluster another task (the evaluator)
    may be writing an export right now, so export folders changed less than that long ago are left alone."""
    import time

    patterns = [os.path.join(model_dir, "*.tmp-*"), os.path.join(model_dir, "export", "*", "temp-*")]
    found = [p for pattern in patterns for p in tf.io.gfile.glob(pattern)]
    if spare_fresh_exports_secs:
        def fresh(path):
            try:
                return time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9 < spare_fresh_exports_secs
            except tf.errors.OpError:
                return True  # Gone meanwhile: nothing to remove.
        found = [p for p in found if not (os.path.basename(p).startswith("temp-") and fresh(p))]
    found += [p for p in tf.io.gfile.glob(os.path.join(model_dir, "*.tmp*")) if _TF_TEMPORARY.search(p)]
    for path in found:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def copy_file(source: str, destination: str) -> None:
    tf.io.gfile.makedirs(os.path.dirname(destination))
    tf.io.gfile.copy(source, destination, overwrite=True)


def check_output_file(path: str, flag: str = "output") -> None:
    """Refuses, before any work, an output file that cannot be written: a folder, under a file, or in a folder
    that cannot be made or written (gs:// paths are checked by their upload)."""
    from trainer.errors import UsageError

    if "://" in path:
        return
    if os.path.isdir(path):
        raise UsageError(f"--{flag}={path} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"--{flag}={path}: {existing} is a file, not a folder")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--{flag}={path}: cannot create the folder {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--{flag}={path}: the folder {parent} is not writable")


def read_run_info(model_dir: str) -> Any:
    """run_info.json of the run in model_dir: a dict, or None when missing or damaged (with a warning: the next
    write replaces it, so a damaged file heals instead of failing every restart)."""
    from absl import logging

    path = os.path.join(model_dir, "run_info.json")
    try:
        info = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        logging.warning("%s is damaged (%s): read as missing; this run rewrites it", path, str(e)[:120])
        return None
    if info is not None and not isinstance(info, dict):
        logging.warning("%s holds a %s, not an object: read as missing; this run rewrites it", path,
                        type(info).__name__)
        return None
    return info
