"""Cheap checks before any graph: can TensorFlow reach the run's gs:// paths, is the champion pointer sane?

TensorFlow's own gs:// filesystem (checkpoints, event files, exports, TFRecord
shards) reports an unreachable Cloud Storage (no network, no credentials, no such
bucket) as a `FailedPreconditionError` deep in a traceback, often minutes into a
run. `check(config)` stats each gs:// path of the run once (one metadata request
each; local paths cost nothing) and turns a failure into one `UsageError` naming
the flag, the path and the likely cause. `storage_failure(exc)` does the same for
a failure later in the run (a network that drops mid-run), for the entry point.
"""
import re
from typing import Iterable, Optional, Tuple

from trainer.config import Config
from trainer.errors import UsageError

# (pattern in TensorFlow's message, the likely cause we tell the user).
_CAUSES = (
    (r"resolve host|couldn't connect|connection refused|timed out|timeout|network is unreachable",
     "no network route to Cloud Storage"),
    (r"\b401\b|\b403\b|credential|permission|unauthorized|forbidden|authentication",
     "missing or insufficient credentials (gcloud auth application-default login, "
     "GOOGLE_APPLICATION_CREDENTIALS, or the service account's roles)"),
    (r"\b404\b|no such bucket|bucket .*not found|not found", "no such bucket or object"),
)


def _paths(config: Config) -> Iterable[Tuple[str, str]]:
    """(flag, gs:// path to stat) for every path TensorFlow's filesystem will read or write."""
    for flag in ("model_dir", "checkpoint_dir", "tensorboard_dir", "data", "eval_data", "labels_file"):
        value = getattr(config, flag)
        if value and value.startswith("gs://"):
            # For a glob, the fixed part before the first wildcard (a folder, or the bucket).
            fixed = re.split(r"[*?\[]", value, maxsplit=1)[0]
            yield flag, fixed if fixed == value else fixed.rsplit("/", 1)[0]


def _probe(path: str) -> str:
    """A path whose stat needs only object permissions.

    A bare bucket (gs://b) would be stat-ed as bucket metadata, which a service account with object roles only
    may not read although the run would work: stat a (normally absent) object in it instead.
    """
    bucket, _, name = path[len("gs://"):].partition("/")
    return path if name.strip("/") else f"gs://{bucket}/.trainer-preflight"


def cause_of(message: str) -> str:
    """The likely cause of a Cloud Storage failure, from TensorFlow's error message."""
    for pattern, cause in _CAUSES:
        if re.search(pattern, message, re.IGNORECASE):
            return cause
    return "network, credentials or bucket"


def _describe(flag: Optional[str], path: str, message: str) -> str:
    first = message.strip().splitlines()[0][:200] if message.strip() else "no detail"
    where = f"--{flag}={path}" if flag else path
    return (f"{where}: TensorFlow cannot reach Cloud Storage ({cause_of(message)}; check the network, the "
            f"credentials and that the bucket exists): {first}")


def check_storage(config: Config) -> None:
    """Stats every gs:// path of the run once; UsageError naming the first that TensorFlow cannot reach."""
    import tensorflow as tf

    seen = set()
    for flag, path in _paths(config):
        if path in seen:
            continue
        seen.add(path)
        try:
            tf.io.gfile.exists(_probe(path))  # False is fine (a new model_dir); an exception is not.
        except tf.errors.OpError as e:
            raise UsageError(_describe(flag, path, e.message)) from None


def check(config: Config) -> None:
    """Every cheap up-front check of this module: storage reachability, then the champion pointer."""
    check_storage(config)
    if config.champion_dir:
        from trainer import champion

        # An unreadable CHAMPION.json (or one naming a missing version) stops the run now, not after training.
        champion.read_current(champion.open_store(config.champion_dir), config.champion_dir)


def storage_failure(exc: BaseException) -> Optional[str]:
    """The one-line message for a TensorFlow Cloud Storage failure raised mid-run, else None."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TensorFlow is always there when this runs.
        return None
    if not isinstance(exc, tf.errors.OpError):
        return None
    message = exc.message or ""
    match = re.search(r"gs://[^\s'\"]+", message)
    if not match and "googleapis.com" not in message:
        return None
    return _describe(None, match.group(0) if match else "a gs:// path", message)
