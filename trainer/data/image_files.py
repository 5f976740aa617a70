"""Image files on disk: which files a folder holds (hidden entries, other extensions and loops left out), and
which of them cannot be read as images (FIFOs, devices, files above the size limit, undecodable bytes), found
without reading what must not be read."""
import os
import stat
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
from absl import logging


def is_hidden(name: str) -> bool:
    """Entries no one means as data: dot files and folders (.git, .ipynb_checkpoints, macOS ._x.jpg
    resource forks) and the __MACOSX folder of zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def real_path(path: str) -> str:
    return os.path.realpath(path) if "://" not in path else path


def find_unreadable(paths: Sequence[str]) -> List[str]:
    """Files TensorFlow cannot decode as an image, found by one parallel decode pass."""
    if not paths:
        return []

    def probe(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.shape(image)[0]

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(probe, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors()
    readable = {p.decode() for p, height in ds.as_numpy_iterator() if height > 0}
    return [p for p in paths if p not in readable]


def file_problem(path: str, max_bytes: int) -> Optional[str]:
    """Why an input file must not be read (a FIFO would block forever, a link to /dev/zero never end, a huge
    file fill the memory), or None. Only regular files up to `max_bytes` are read."""
    if "://" in path:
        try:
            size = tf.io.gfile.stat(path).length
        except tf.errors.OpError:
            return "cannot be read"
    else:
        try:
            status = os.stat(path)
        except OSError as e:
            return f"cannot be read ({e.strerror})"
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file"
        size = status.st_size
    if size > max_bytes:
        return f"{size / 2**20:.0f} MB, above --max_image_mb={max_bytes // 2**20}"
    return None


def list_image_files(folder: str, ignored: Dict[str, int], seen: set) -> List[str]:
    """Image files under `folder` (recursively), relative to it.

    Hidden entries are skipped; other files are counted by extension in `ignored`. Each real
    folder is walked once (`seen`): symlinks are followed, loops are not.
    """
    found = []
    if "://" in folder:
        walk = tf.io.gfile.walk(folder)
    else:
        walk = os.walk(folder, followlinks=True)
    for dirpath, dirnames, filenames in walk:
        if "://" not in folder:
            keep = []
            for d in dirnames:
                real = real_path(os.path.join(dirpath, d))
                if is_hidden(d) or real in seen:
                    if not is_hidden(d):
                        logging.warning("not following %s: it leads to %s, already read", os.path.join(dirpath, d),
                                        real)
                    continue
                seen.add(real)
                keep.append(d)
            dirnames[:] = keep
        elif any(is_hidden(part) for part in os.path.relpath(dirpath, folder).split(os.sep) if part != "."):
            continue
        for f in filenames:
            if is_hidden(f):
                continue
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), folder))
            else:
                ext = os.path.splitext(f)[1].lower()
                ignored[ext] = ignored.get(ext, 0) + 1
    return found


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
