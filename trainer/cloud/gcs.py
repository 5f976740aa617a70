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
