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
    """Every cheap up-front check of this module: storage reachability, then the champion folder."""
    check_storage(config)
    if config.champion_dir:
        check_champion(config)


def check_champion(config: Config) -> None:
    """What would make promotion fail after training, found before it.

    A local --champion_dir that cannot be written, an unreadable CHAMPION.json (or one naming a missing
    version), a bucket that does not answer: UsageError. A champion whose keras_model.h5 cannot be loaded
    is no reason to stop (promotion replaces it): a warning now, the decision at promotion.
    """
    from absl import logging

    from trainer.retrain import champion_store as champion

    store = champion.open_store(config.champion_dir)
    if isinstance(store, champion.LocalStore):
        _check_writable(config.champion_dir, store.root)
    try:
        pointer = champion.read_current(store, config.champion_dir)
        if pointer is None:
            if hasattr(store, "bucket_exists") and not store.bucket_exists():  # SRE trial 2026-12-04 B4.
                raise UsageError(f"--champion_dir={config.champion_dir}: no such bucket gs://{store.bucket_name} "
                                 "(promotion could not copy this run's model there after training); create it "
                                 f"(gcloud storage buckets create gs://{store.bucket_name}) or fix the name")
            return
        from trainer.retrain import promotion

        model, broken, path = promotion.load_champion_at(store, pointer["version"])
        del model
        foreign = promotion.other_runtime(store, pointer["version"], path) if broken else None
    except UsageError:
        raise
    except Exception as e:
        detail = champion.network_failure(e)
        if detail is None:
            raise
        raise UsageError(f"--champion_dir={config.champion_dir}: Cloud Storage cannot be reached ({detail}); "
                         "check the network and the credentials, then run the same command again") from None
    if not broken:
        return
    if foreign:  # Sound, of another Keras: promotion keeps it; it cannot be a warm start here.
        written = f"Keras {foreign['keras_version']}" + (
            f" (TensorFlow {foreign['tf_version']})" if foreign.get("tf_version") else "")
        if config.warm_start_from == "champion":
            raise UsageError(f"--warm_start_from=champion: the champion version {pointer['version']} was written by "
                             f"{written} and cannot be loaded by this runtime ({broken}); run this retraining on "
                             "that runtime")
        logging.warning("--champion_dir=%s: the champion version %s was written by %s and cannot be loaded here: "
                        "this run will not replace it (promotion needs a comparison); run on that runtime",
                        config.champion_dir, pointer["version"], written)
        return
    repair = (f"`python -m trainer.champion rollback --champion_dir={config.champion_dir} --to=VERSION` "
              "(`history` lists the versions)")
    if config.warm_start_from == "champion":
        raise UsageError(f"--warm_start_from=champion: the champion version {pointer['version']} cannot be loaded "
                         f"({broken}); roll back to a sound version with {repair}, or run once without "
                         "--warm_start_from=champion: its model then replaces the broken one")
    logging.warning("--champion_dir=%s: the champion version %s cannot be loaded (%s): this run's model will "
                    "replace it at promotion, without a comparison; to keep an older version instead, stop now and "
                    "run %s", config.champion_dir, pointer["version"], broken, repair)


def _check_writable(flag_value: str, root: str) -> None:
    """UsageError unless promotion can create files in the local champion folder (or the folder above it)."""
    import os
    import tempfile

    path = os.path.abspath(root)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--champion_dir={flag_value} is a file, not a folder")
    existing = path
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    reason = None
    if existing == path:  # Ours to write in: try it (root ignores permission bits, not a read-only mount).
        try:
            fd, probe = tempfile.mkstemp(prefix=".trainer-preflight-", dir=path)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            reason = e.strerror or str(e)
    elif not os.access(existing, os.W_OK | os.X_OK):  # Not ours: no probe file in it, ask instead.
        reason = "Read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "Permission denied"
        reason += f" at {existing}"
    if reason:
        raise UsageError(f"--champion_dir={flag_value} is not writable ({reason}): promotion could not copy this "
                         "run's model there after training; make it writable or give another folder")


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
