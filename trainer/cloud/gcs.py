"""Cloud Storage objects through google-cloud-storage: downloads, uploads, retries.

TensorFlow's own gs:// filesystem streams data and checkpoints; this module
handles whole objects the trainer must hold locally (a `--base_model`, a
`--weights` file) or copy (checkpoint mirroring, promotion). It honours
`STORAGE_EMULATOR_HOST` (anonymous credentials against a local server), retries
transient errors (HTTP 429/5xx, dropped connections) with exponential backoff,
and never leaves a partial download under its final name.
"""
import base64
import os
import struct
import uuid
from typing import Optional, Tuple

from trainer.errors import UsageError

# Transient failures (429, 5xx, connection resets) are retried with backoff for up to this long.
RETRY_DEADLINE_SECS = 120.0


def is_gcs(path: Optional[str]) -> bool:
    return bool(path) and path.startswith("gs://")


def split_uri(uri: str) -> Tuple[str, str]:
    """gs://bucket/path/to/object -> ("bucket", "path/to/object")."""
    if not is_gcs(uri):
        raise UsageError(f"{uri} is not a gs:// URI")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise UsageError(f"{uri} names no bucket")
    return bucket, name


def retry(deadline: float = RETRY_DEADLINE_SECS):
    """google-cloud-storage's retry policy (429, 5xx, connection errors), with our deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline)


_CLIENT = None


def client():
    """A storage client; anonymous against `STORAGE_EMULATOR_HOST` when that is set."""
    global _CLIENT
    if _CLIENT is not None and getattr(_CLIENT, "_emulator", None) == os.environ.get("STORAGE_EMULATOR_HOST"):
        return _CLIENT
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        if emulator:
            from google.auth.credentials import AnonymousCredentials

            _CLIENT = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"),
                                     credentials=AnonymousCredentials())
        else:
            _CLIENT = storage.Client()
    except DefaultCredentialsError:
        raise UsageError("no Google Cloud credentials for gs:// paths: run `gcloud auth application-default "
                         "login` or set GOOGLE_APPLICATION_CREDENTIALS") from None
    _CLIENT._emulator = emulator
    return _CLIENT


def _crc32c(path: str) -> str:
    """Base64 CRC32C of a local file, as Cloud Storage reports it."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            checksum.update(chunk)
    return base64.b64encode(struct.pack(">I", int.from_bytes(checksum.digest(), "big"))).decode()


def _blob(uri: str, flag: str):
    from google.api_core import exceptions

    bucket_name, name = split_uri(uri)
    try:
        blob = client().bucket(bucket_name).get_blob(name, retry=retry())
    except exceptions.NotFound:
        raise UsageError(f"--{flag}={uri}: no such bucket '{bucket_name}'") from None
    except exceptions.Forbidden as e:
        raise UsageError(f"--{flag}={uri}: access denied ({e.message[:160]})") from None
    if blob is None:
        if client().lookup_bucket(bucket_name, retry=retry()) is None:
            raise UsageError(f"--{flag}={uri}: no such bucket '{bucket_name}'")
        raise UsageError(f"--{flag}={uri}: no such object")
    return blob


def cache_dir() -> str:
    return os.environ.get("TRAINER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "trainer")


def download(uri: str, flag: str) -> str:
    """Downloads a gs:// object once into the local cache; returns the local path.

    A cached copy is reused only when its size and CRC32C match the object's. A new
    download goes to a temporary name, is verified, and only then renamed.
    """
    blob = _blob(uri, flag)
    bucket_name, name = split_uri(uri)
    local = os.path.join(cache_dir(), "gcs", bucket_name, name)
    if os.path.exists(local) and os.path.getsize(local) == blob.size and _crc32c(local) == blob.crc32c:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.part-{uuid.uuid4().hex[:8]}"
    try:
        blob.download_to_filename(tmp, checksum="crc32c", retry=retry())
        if os.path.getsize(tmp) != blob.size or _crc32c(tmp) != blob.crc32c:
            raise IOError(f"download of {uri} does not match its size/CRC32C")
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


def upload(local: str, uri: str, if_generation_match: Optional[int] = None) -> int:
    """Uploads a local file (CRC32C-checked, retried); returns the new object's generation."""
    bucket_name, name = split_uri(uri)
    blob = client().bucket(bucket_name).blob(name)
    blob.upload_from_filename(local, checksum="crc32c", if_generation_match=if_generation_match,
                              retry=retry())
    return blob.generation


def localize(path: Optional[str], flag: str) -> Optional[str]:
    """A local path for a single-file `path` (.h5/.keras/weights): gs:// objects are downloaded.

    Local and /gcs/ (Cloud Storage FUSE) paths pass through, and so do gs:// SavedModel
    folders, which TensorFlow reads itself.
    """
    if not is_gcs(path):
        return path
    if flag == "base_model" and not path.endswith((".h5", ".hdf5", ".keras")):
        return path
    return download(path, flag)


# --- Small objects and bounded background uploads (the gs:// run lock, checkpoint mirroring). ---

_THREAD_CLIENTS = None


def thread_client():
    """A storage client of the calling thread's own, with client()'s credentials.

    Background threads (the run lock's renewal, checkpoint mirroring) use this one, so that no
    HTTP session is shared between threads.
    """
    import threading

    global _THREAD_CLIENTS
    if threading.current_thread() is threading.main_thread():
        return client()
    main = client()
    if _THREAD_CLIENTS is None:
        _THREAD_CLIENTS = threading.local()
    own = getattr(_THREAD_CLIENTS, "client", None)
    if own is None or getattr(own, "_emulator", None) != main._emulator:
        from google.cloud import storage

        own = storage.Client(project=main.project, credentials=main._credentials)
        own._emulator = main._emulator
        _THREAD_CLIENTS.client = own
    return own


def bounded_retry(deadline: float, max_sleep: float = 8.0):
    """retry(deadline) with sleeps of at most `max_sleep` s (small objects; see upload_once for files)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(deadline).with_delay(initial=1.0, maximum=max_sleep, multiplier=2.0)


def is_transient(error: BaseException) -> bool:
    """Whether google-cloud-storage's own retry policy would retry this error (429, 5xx, dropped connections)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return bool(DEFAULT_RETRY._predicate(error))


def upload_once(local: str, uri: str, timeout=(10, 120)) -> int:
    """One upload attempt, without retries (the caller retries on is_transient errors, on its own terms:
    the library's retries cannot be interrupted, and for files over 8 MB ignore a custom predicate)."""
    bucket_name, name = split_uri(uri)
    blob = thread_client().bucket(bucket_name).blob(name)
    blob.upload_from_filename(local, checksum="crc32c", retry=None, timeout=timeout)
    return blob.generation


def upload_text(text: str, uri: str, if_generation_match: Optional[int] = None, deadline: float = 30.0,
                timeout=(5, 30), content_type: str = "text/plain") -> int:
    """Writes a small object from a string (conditionally); returns the new generation.

    Raises google.api_core.exceptions.PreconditionFailed when `if_generation_match` does not hold.
    `deadline=0`: one attempt, no retries.
    """
    bucket_name, name = split_uri(uri)
    blob = thread_client().bucket(bucket_name).blob(name)
    blob.upload_from_string(text, content_type=content_type, if_generation_match=if_generation_match,
                            retry=bounded_retry(deadline) if deadline else None, timeout=timeout)
    return blob.generation


def read_text(uri: str, deadline: float = 30.0, timeout=(5, 30)):
    """(text, generation, updated datetime) of a small object, or None when there is none."""
    from google.api_core import exceptions

    bucket_name, name = split_uri(uri)
    for attempt in range(5):
        blob = thread_client().bucket(bucket_name).get_blob(name, retry=bounded_retry(deadline), timeout=timeout)
        if blob is None:
            return None
        try:  # That generation exactly: a newer write in between must not be read as this one.
            data = blob.download_as_bytes(if_generation_match=blob.generation, retry=bounded_retry(deadline),
                                          timeout=timeout)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            if attempt == 4:
                raise
            continue  # Replaced or deleted meanwhile: read the current one.
        return data.decode("utf-8", errors="replace"), blob.generation, blob.updated


def delete_if_generation(uri: str, generation: int, deadline: float = 30.0, timeout=(5, 30)) -> bool:
    """Deletes an object only if it is still at `generation`; False when it was not (or is gone)."""
    from google.api_core import exceptions

    bucket_name, name = split_uri(uri)
    try:
        thread_client().bucket(bucket_name).blob(name).delete(if_generation_match=generation,
                                                               retry=bounded_retry(deadline), timeout=timeout)
        return True
    except (exceptions.NotFound, exceptions.PreconditionFailed):
        return False
