"""Champion/challenger: promote a retrained model only when it beats the current one.

Layout under --champion_dir (a local folder or gs://BUCKET/prefix):

    CHAMPION.json             names the current version, with its metrics, time and source run
    <version>/model/          the serving SavedModel
    <version>/keras_model.h5  the Keras model (a --warm_start_from / --base_model)
    <version>/metrics.json    the metrics it was promoted with

A version folder is complete before CHAMPION.json names it, and CHAMPION.json is
replaced atomically: locally by a rename under a file lock, on Cloud Storage by a
write with a generation precondition. When two runs race, one wins and the other
is told it lost; a reader that follows CHAMPION.json never sees a partial model.

    python -m trainer.champion show|history|rollback --champion_dir=DIR [--to=VERSION]
"""
import contextlib
import json
import os
import re
import time
import uuid
from typing import List, Optional, Tuple

from trainer.errors import UsageError

POINTER = "CHAMPION.json"
# Leftovers of failed promotions are removed at a later promotion once this old (a younger one may be in flight).
LEFTOVER_AGE_SECS = 600.0


def parse_pointer(raw: bytes, where: str) -> dict:
    """CHAMPION.json's bytes -> the pointer; UsageError naming the file and the fix when unreadable."""
    try:
        pointer = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        reason = f"not valid JSON: {e}"
    else:
        if isinstance(pointer, dict) and isinstance(pointer.get("version"), str) and pointer["version"]:
            return pointer
        reason = "no \"version\" in it"
    raise UsageError(f"{where} is unreadable ({reason}); repair it with `python -m trainer.champion rollback "
                     f"--champion_dir={os.path.dirname(where)} --to=VERSION` (`history` lists the versions)")


class Unreachable(UsageError):
    """Cloud Storage stopped answering during a promotion; the message says what was left where."""


def network_failure(error: BaseException) -> Optional[str]:
    """`Type: first line` when `error` (or what caused it) is Cloud Storage not answering: a refused or dropped
    connection, a timeout, retries of 429/5xx replies that ran out. None for anything else."""
    kinds = [ConnectionError, TimeoutError]
    try:
        import requests
        from google.api_core import exceptions
        from google.auth import exceptions as auth_exceptions

        kinds += [requests.exceptions.RequestException, exceptions.RetryError, exceptions.ServerError,
                  exceptions.TooManyRequests, auth_exceptions.TransportError]
    except ImportError:  # pragma: no cover - google-cloud-storage brings them all.
        pass
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, tuple(kinds)):
            text = " ".join(str(error).split())
            # requests' text is a long repr chain; its end (`[Errno 111] Connection refused`) says it.
            errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
            host = re.search(r"host='([^']+)', port=(\d+)", text)
            if errno:
                text = errno.group(0).strip() + (f" ({host.group(1)}:{host.group(2)})" if host else "")
            return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__
        if isinstance(error, UsageError):
            return None
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "error" in metric or metric in ("mse", "mae")


def beats(challenger: float, champion: float, metric: str, min_delta: float) -> bool:
    if lower_is_better(metric):
        return challenger < champion - min_delta
    return challenger > champion + min_delta


def new_version() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class LocalStore:
    """A champion folder on a local (or FUSE-mounted) filesystem."""

    def __init__(self, root: str):
        self.root = root

    def read_pointer(self, strict: bool = True) -> Tuple[Optional[dict], object]:
        """(pointer or None, token for write_pointer). Unreadable: UsageError, or (None, token) if not strict."""
        path = os.path.join(self.root, POINTER)
        if not os.path.exists(path):
            return None, None
        raw = open(path, "rb").read()
        return _parsed(raw, path, strict), raw

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def is_complete(self, version: str) -> bool:
        return os.path.exists(os.path.join(self.root, version, "metrics.json"))

    @contextlib.contextmanager
    def _lock(self):
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def write_pointer(self, pointer: dict, token) -> bool:
        """Replaces CHAMPION.json if it is still what was read (token); False if another run got there first."""
        path = os.path.join(self.root, POINTER)
        with self._lock():
            current = open(path, "rb").read() if os.path.exists(path) else None
            if current != token:
                return False
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "w") as f:
                    f.write(json.dumps(pointer, indent=2, sort_keys=True) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:  # A full disk (promotion or rollback): no temporary left behind.
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
            return True

    def put_version(self, version: str, saved_model_dir: str, keras_h5: str, metrics: dict) -> None:
        from trainer.util import files

        self._remove_leftovers()
        tmp = os.path.join(self.root, f".{version}.partial")
        try:
            files.copy_tree(saved_model_dir, os.path.join(tmp, "model"))
            files.copy_file(keras_h5, os.path.join(tmp, "keras_model.h5"))
            files.write_json(os.path.join(tmp, "metrics.json"), metrics)
            os.replace(tmp, os.path.join(self.root, version))  # The folder appears complete or not at all.
        except Exception:  # Our own half copy (a full disk): removed now; a killed process's, at a later promotion.
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_version(self, version: str) -> None:
        """Removes a version CHAMPION.json does not name (a lost race's copy): first renamed back to its
        `.VERSION.partial` name, so it stops being a version at once, even if the removal itself fails."""
        import shutil

        tmp = os.path.join(self.root, f".{version}.partial")
        os.replace(os.path.join(self.root, version), tmp)
        shutil.rmtree(tmp)

    def keras_model(self, version: str) -> str:
        return os.path.join(self.root, version, "keras_model.h5")

    def _remove_leftovers(self, age: Optional[float] = None) -> None:
        """Half-copied versions (`.VERSION.partial`) and pointer temporaries of failed promotions or rollbacks
        (a full disk): removed once older than `age` seconds (a younger one may be another run's, in flight)."""
        import glob
        import shutil

        age = LEFTOVER_AGE_SECS if age is None else age
        for path in glob.glob(os.path.join(self.root, ".*.partial")) + glob.glob(
                os.path.join(self.root, f"{POINTER}.tmp-*")):
            try:
                if time.time() - os.path.getmtime(path) > age:
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            except OSError:
                continue

    def versions(self) -> List[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(v for v in os.listdir(self.root)
                      if os.path.exists(os.path.join(self.root, v, "metrics.json")))

    def metrics(self, version: str) -> dict:
        return json.load(open(os.path.join(self.root, version, "metrics.json")))


class GcsStore:
    """A champion folder on Cloud Storage (google-cloud-storage, generation preconditions)."""

    def __init__(self, uri: str):
        from trainer.cloud import gcs

        self.bucket_name, prefix = gcs.split_uri(uri.rstrip("/"))
        self.prefix = prefix.strip("/")
        self.uri = uri.rstrip("/")

    def _name(self, *parts) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _bucket(self):
        from trainer.cloud import gcs

        return gcs.client().bucket(self.bucket_name)

    def read_pointer(self, strict: bool = True) -> Tuple[Optional[dict], object]:
        """(pointer or None, generation for write_pointer). Unreadable: UsageError, or (None, gen) if not strict."""
        from trainer.cloud import gcs

        blob = self._bucket().get_blob(self._name(POINTER), retry=gcs.retry())
        if blob is None:
            return None, 0  # Generation 0: "must not exist yet".
        raw = blob.download_as_bytes(retry=gcs.retry())
        return _parsed(raw, f"{self.uri}/{POINTER}", strict), blob.generation

    def exists(self) -> bool:
        """Cloud Storage has no folders: the champion folder exists when some object lies under it."""
        from google.api_core import exceptions
        from trainer.cloud import gcs

        prefix = self._name("") + "/" if self.prefix else ""
        try:
            return any(True for _ in gcs.client().list_blobs(self.bucket_name, prefix=prefix, max_results=1,
                                                            retry=gcs.retry()))
        except exceptions.NotFound:  # No such bucket.
            return False

    def is_complete(self, version: str) -> bool:
        from trainer.cloud import gcs

        return self._bucket().get_blob(self._name(version, "metrics.json"), retry=gcs.retry()) is not None

    def write_pointer(self, pointer: dict, token) -> bool:
        from google.api_core import exceptions
        from trainer.cloud import gcs

        blob = self._bucket().blob(self._name(POINTER))
        body = json.dumps(pointer, indent=2, sort_keys=True) + "\n"
        try:
            blob.upload_from_string(body, content_type="application/json", if_generation_match=token,
                                    retry=gcs.retry())
            return True
        except exceptions.PreconditionFailed:
            # Lost the race, or won it and lost the reply (the server committed, the client saw an error and
            # retried, and the retry found its own write): the pointer now says which.
            current = self._bucket().get_blob(self._name(POINTER), retry=gcs.retry())
            return current is not None and current.download_as_bytes(retry=gcs.retry()) == body.encode()

    def put_version(self, version: str, saved_model_dir: str, keras_h5: str, metrics: dict) -> None:
        import tensorflow as tf
        from trainer.cloud import gcs

        def put(source: str, name: str) -> None:
            target = f"gs://{self.bucket_name}/{name}"
            if "://" in source:  # Already on Cloud Storage: a server-side copy through TF's filesystem.
                tf.io.gfile.copy(source, target, overwrite=True)
            else:
                gcs.upload(source, target)

        self._remove_leftovers()
        try:
            for dirpath, _, filenames in tf.io.gfile.walk(saved_model_dir):
                for name in filenames:
                    source = os.path.join(dirpath, name)
                    relative = source[len(saved_model_dir.rstrip("/")):].lstrip("/")
                    put(source, self._name(version, "model", relative))
            put(keras_h5, self._name(version, "keras_model.h5"))
            # metrics.json last: a version with metrics.json is complete.
            self._bucket().blob(self._name(version, "metrics.json")).upload_from_string(
                json.dumps(metrics, indent=2, sort_keys=True), retry=gcs.retry())
        except Exception as e:
            # Without metrics.json the objects are no version (never listed, used or rolled back to); remove
            # them now if the bucket still answers, else a later promotion does (_remove_leftovers).
            removed = self._delete_under(version)
            detail = network_failure(e)
            if detail is None:
                raise
            left = ("the objects uploaded so far were removed" if removed else
                    f"the objects uploaded so far under {self.uri}/{version}/ could not be removed (they have no "
                    "metrics.json, so they are never listed or used; a later promotion removes them)")
            raise Unreachable(f"--champion_dir={self.uri}: Cloud Storage became unreachable while copying the "
                              f"challenger to version {version} ({detail}); CHAMPION.json is unchanged and {left}") \
                from None

    def remove_version(self, version: str) -> None:
        """Removes a version CHAMPION.json does not name (a lost race's copy), metrics.json first: it stops
        being a version at once, even if removing the rest fails."""
        if not self._delete_under(version, deadline=None):
            raise OSError(f"could not remove {self.uri}/{version}/")

    def _delete_under(self, version: str, deadline: Optional[float] = 10.0) -> bool:
        """Deletes every object of a version, metrics.json first; False if any remains (best effort)."""
        from google.api_core import exceptions
        from trainer.cloud import gcs

        retry = gcs.retry() if deadline is None else gcs.retry(deadline)
        try:
            prefix = self._name(version) + "/"
            names = sorted((b.name for b in gcs.client().list_blobs(self.bucket_name, prefix=prefix, retry=retry)),
                           key=lambda n: not n.endswith("/metrics.json"))
            for name in names:
                try:
                    self._bucket().blob(name).delete(retry=retry)
                except exceptions.NotFound:
                    pass
            return True
        except Exception:  # noqa: BLE001 - best effort: the bucket may be unreachable.
            return False

    def _remove_leftovers(self, age: Optional[float] = None) -> None:
        """Objects of versions that never got their metrics.json (a promotion that failed or was killed while
        uploading): removed once the newest of them is older than `age` seconds (a younger one may be another
        run's upload, in flight)."""
        from trainer.cloud import gcs

        age = LEFTOVER_AGE_SECS if age is None else age
        prefix = self._name("") + "/" if self.prefix else ""
        newest, complete = {}, set()
        try:
            for blob in gcs.client().list_blobs(self.bucket_name, prefix=prefix, retry=gcs.retry()):
                version, _, rest = blob.name[len(prefix):].partition("/")
                if not rest:
                    continue  # CHAMPION.json and other top-level objects.
                if rest == "metrics.json":
                    complete.add(version)
                when = blob.updated or blob.time_created
                stamp = when.timestamp() if when else time.time()
                newest[version] = max(newest.get(version, 0.0), stamp)
        except Exception:  # noqa: BLE001 - housekeeping must not stop a promotion.
            return
        for version, stamp in newest.items():
            if version not in complete and time.time() - stamp > age:
                self._delete_under(version)

    def keras_model(self, version: str) -> str:
        from trainer.cloud import gcs

        return gcs.download(f"gs://{self.bucket_name}/{self._name(version, 'keras_model.h5')}", "champion_dir")

    def versions(self) -> List[str]:
        from trainer.cloud import gcs

        prefix = self._name("") + "/" if self.prefix else ""
        blobs = gcs.client().list_blobs(self.bucket_name, prefix=prefix, retry=gcs.retry())
        return sorted(b.name[len(prefix):].split("/")[0] for b in blobs if b.name.endswith("/metrics.json"))

    def metrics(self, version: str) -> dict:
        return json.loads(self._bucket().blob(self._name(version, "metrics.json")).download_as_bytes())


def _parsed(raw: bytes, where: str, strict: bool) -> Optional[dict]:
    try:
        return parse_pointer(raw, where)
    except UsageError:
        if strict:
            raise
        return None


def open_store(champion_dir: str):
    from trainer.config import to_gcs_uri

    champion_dir = to_gcs_uri(champion_dir)
    return GcsStore(champion_dir) if champion_dir.startswith("gs://") else LocalStore(champion_dir)


def current_keras_model(champion_dir: str) -> Optional[str]:
    """Local path of the champion's keras_model.h5, or None when there is no champion yet."""
    store = open_store(champion_dir)
    pointer = read_current(store, champion_dir)
    return store.keras_model(pointer["version"]) if pointer else None


def read_current(store, champion_dir: str, token: bool = False):
    """The pointer (None: no champion yet), checked to name a complete version; with token: (pointer, token).

    Raises:
        UsageError: CHAMPION.json is unreadable or names a missing or incomplete version.
    """
    pointer, generation = store.read_pointer()
    if pointer is not None and not store.is_complete(pointer["version"]):
        raise UsageError(f"{champion_dir.rstrip('/')}/{POINTER} names version {pointer['version']}, which is "
                         f"missing or incomplete (no metrics.json); repair it with `python -m trainer.champion "
                         f"rollback --champion_dir={champion_dir} --to=VERSION` (`history` lists the versions)")
    return (pointer, generation) if token else pointer


def decide(metric: str, challenger: float, champion: Optional[float], min_delta: float) -> Tuple[bool, str]:
    if champion is None:
        return True, "no champion yet"
    if beats(challenger, champion, metric, min_delta):
        return True, f"challenger {metric} {challenger:.6f} beats champion {champion:.6f} by more than {min_delta}"
    return False, f"challenger {metric} {challenger:.6f} does not beat champion {champion:.6f} by more than {min_delta}"


def promote(store, token, version: str, saved_model_dir: str, keras_h5: str, metrics: dict, source: str,
            previous: Optional[str], chain: Optional[List[str]] = None, report: Optional[dict] = None) -> bool:
    """Copies the challenger into its version folder, then swaps CHAMPION.json. False if the race was lost:
    then the copy is removed again, and `report` (if given) gets `removed` (bool) and `error` (why not).

    `chain`: the versions that were champion before, oldest first (default: `previous` alone).

    Raises:
        UsageError: Cloud Storage became unreachable (the message says what was left where)."""
    store.put_version(version, saved_model_dir, keras_h5, metrics)
    pointer = {"version": version, "metrics": metrics, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "source_run": source, "previous": previous,
               "chain": list(chain) if chain is not None else ([previous] if previous else [])}
    try:
        won = store.write_pointer(pointer, token)
    except Exception as e:
        detail = network_failure(e)
        if detail is None:
            raise
        where = getattr(store, "uri", getattr(store, "root", ""))
        raise Unreachable(f"--champion_dir={where}: Cloud Storage became unreachable while replacing "
                          f"{POINTER} ({detail}); version {version} was copied, but whether {POINTER} names it is "
                          f"unknown: check with `python -m trainer.champion show --champion_dir={where}`") from None
    if won:
        return True
    # Lost the race: the copy must not stay behind looking like a version (`history` would list it, `rollback
    # --to` accept it). Unless CHAMPION.json names it after all (a rollback --to it in between).
    outcome = {"removed": False, "error": None}
    try:
        current, _ = store.read_pointer(strict=False)
        if current is not None and current.get("version") == version:
            outcome["error"] = f"{POINTER} names it"
        else:
            store.remove_version(version)
            outcome["removed"] = True
    except Exception as e:  # noqa: BLE001 - best effort; said on the console by the caller.
        outcome["error"] = f"{type(e).__name__}: {str(e).strip()[:160]}"
    if report is not None:
        report.update(outcome)
    return False


def rollback(champion_dir: str, to: Optional[str] = None) -> dict:
    """Points CHAMPION.json back at `to` (default: the version before the current one)."""
    store = open_store(champion_dir)
    # An unreadable CHAMPION.json must not stop the one command that repairs it (with --to).
    pointer, token = store.read_pointer(strict=to is None)
    if pointer is None and token in (None, 0):
        raise UsageError(f"--champion_dir={champion_dir} has no champion to roll back")
    chain = lineage(pointer) if pointer else []
    target = to or (chain[-1] if chain else None)
    if not target:
        raise UsageError(f"the current champion {pointer['version']} has no earlier champion; name a version "
                         "with --to")
    if not store.is_complete(target):
        raise UsageError(f"--to={target} is not a complete version; versions: "
                         f"{', '.join(store.versions()) or 'none'}")
    current = pointer["version"] if pointer else None
    new = {"version": target, "metrics": store.metrics(target), "time": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_run": f"rollback from {current}" if current else f"rollback (repaired an unreadable {POINTER})",
        "rolled_back_from": current}
    # Each rollback without --to goes one champion further back, never forward to the one it left.
    new["chain"] = chain[:chain.index(target)] if target in chain else chain + ([current] if current else [])
    new["previous"] = new["chain"][-1] if new["chain"] else None
    if not store.write_pointer(new, token):
        raise UsageError("CHAMPION.json changed while rolling back (another promotion?); try again")
    return new


def lineage(pointer: dict) -> List[str]:
    """The versions that were champion before this pointer's, oldest first (older pointers: `previous` only)."""
    chain = pointer.get("chain")
    if isinstance(chain, list):
        return [str(v) for v in chain]
    return [pointer["previous"]] if pointer.get("previous") else []
