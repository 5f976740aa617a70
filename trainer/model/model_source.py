"""Finding a trained model's serving SavedModel from what a user points at.

`--model` may be a run's model_dir (its newest export), an export kind folder
(`export/best`), an export version folder (it has `saved_model.pb`), a champion
folder (the version `CHAMPION.json` names) or one of its version folders, each of
them local or on `gs://`.
SavedModels on Cloud Storage are downloaded once with google-cloud-storage into
the local cache (`$TRAINER_CACHE_DIR`), assembled under a temporary name and
renamed, so an interrupted download is never used.
"""
import json
import os
import shutil
import uuid
from typing import List, Optional

import tensorflow as tf

from trainer.cloud import gcs
from trainer.config import served_export_kinds, to_gcs_uri
from trainer.errors import UsageError

SAVED_MODEL = "saved_model.pb"


def resolve(path: str, flag: str = "model") -> str:
    """A local SavedModel folder for `path` (see the module docstring).

    Raises:
        UsageError: nothing under `path` is a SavedModel.
    """
    path = to_gcs_uri(path.rstrip("/")) if path else path
    if not path:
        raise UsageError(f"--{flag} is required: a model_dir, an export folder, a champion folder or gs:// path")
    listing = _GcsListing(path) if gcs.is_gcs(path) else _LocalListing(path)
    if not listing.exists():
        raise UsageError(f"--{flag}={path} does not exist")
    found = _find_saved_model(listing, path)
    if found is None:
        raise UsageError(f"--{flag}={path} holds no SavedModel ({SAVED_MODEL}): give a model_dir, an export "
                         "folder (export/best/<version>) or a --champion_dir with a CHAMPION.json")
    return listing.localize(found)


def _find_saved_model(listing, path: str) -> Optional[str]:
    if listing.isfile(_join(path, SAVED_MODEL)):
        return path
    pointer = listing.read(_join(path, "CHAMPION.json"))
    if pointer is not None:
        model = _join(path, json.loads(pointer)["version"], "model")
        return model if listing.isfile(_join(model, SAVED_MODEL)) else None
    if listing.isfile(_join(path, "model", SAVED_MODEL)):  # A champion version folder.
        return _join(path, "model")
    newest = _newest_version(listing, path)  # An export kind folder.
    if newest:
        return newest
    run_info = listing.read(_join(path, "run_info.json"))
    flags = json.loads(run_info).get("flags", {}) if run_info else {}
    for kind in served_export_kinds(flags):  # export/calibrated/ first when the run calibrated.
        newest = _newest_version(listing, _join(path, "export", kind))
        if newest:
            return newest
    return None


def _newest_version(listing, folder: str) -> Optional[str]:
    versions = sorted((v for v in listing.children(folder) if v.isdigit()), key=int)
    for version in reversed(versions):
        if listing.isfile(_join(folder, version, SAVED_MODEL)):
            return _join(folder, version)
    return None


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


class _LocalListing:
    """Local (and any TensorFlow filesystem) paths."""

    def __init__(self, root: str):
        self.root = root

    def exists(self) -> bool:
        return tf.io.gfile.exists(self.root)

    def isfile(self, path: str) -> bool:
        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)

    def read(self, path: str) -> Optional[bytes]:
        if not self.isfile(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()

    def children(self, folder: str) -> List[str]:
        if not tf.io.gfile.isdir(folder):
            return []
        return [c.rstrip("/") for c in tf.io.gfile.listdir(folder)]

    def localize(self, path: str) -> str:
        return path


class _GcsListing:
    """A gs:// prefix, listed once with google-cloud-storage."""

    def __init__(self, root: str):
        self.bucket, prefix = gcs.split_uri(root)
        from google.api_core import exceptions

        try:
            blobs = gcs.client().list_blobs(self.bucket, prefix=prefix.rstrip("/") + "/" if prefix else "",
                                            retry=gcs.retry())
            self.names = {b.name: b for b in blobs}
        except exceptions.NotFound:
            raise UsageError(f"--model={root}: no such bucket '{self.bucket}'") from None

    def _name(self, path: str) -> str:
        return gcs.split_uri(path)[1]

    def exists(self) -> bool:
        return bool(self.names)

    def isfile(self, path: str) -> bool:
        return self._name(path) in self.names

    def read(self, path: str) -> Optional[bytes]:
        blob = self.names.get(self._name(path))
        return blob.download_as_bytes(retry=gcs.retry()) if blob is not None else None

    def children(self, folder: str) -> List[str]:
        prefix = self._name(folder).rstrip("/") + "/"
        return sorted({n[len(prefix):].split("/")[0] for n in self.names if n.startswith(prefix)})

    def localize(self, path: str) -> str:
        """Downloads the SavedModel folder into the cache once (reused while complete)."""
        prefix = self._name(path).rstrip("/") + "/"
        local = os.path.join(gcs.cache_dir(), "gcs", self.bucket, prefix.rstrip("/"))
        if os.path.exists(os.path.join(local, SAVED_MODEL)):
            return local  # Version folders never change once written.
        tmp = f"{local}.part-{uuid.uuid4().hex[:8]}"
        try:
            for name, blob in self.names.items():
                if name.startswith(prefix) and not name.endswith("/"):
                    target = os.path.join(tmp, name[len(prefix):])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    blob.download_to_filename(target, checksum="crc32c", retry=gcs.retry())
            if os.path.exists(local):
                shutil.rmtree(local)
            os.replace(tmp, local)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local
