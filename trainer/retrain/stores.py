"""Where champions are kept: a local folder (renames under a file lock) or Cloud Storage (writes with generation
preconditions), behind one small interface (read/write the CHAMPION.json pointer, put/list/remove a version);
and what a store's failures say (a damaged pointer, an unreachable bucket)."""
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

    def bucket_exists(self) -> bool:
        """False when the bucket itself is missing (get_blob answers None for it, as for a missing object)."""
        from google.api_core import exceptions
        from trainer.cloud import gcs

        try:
            for _ in gcs.client().list_blobs(self.bucket_name, max_results=1, retry=gcs.retry()):
                break
            return True
        except exceptions.NotFound:
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
