"""Data sources: what `--data` names, loaded into an in-memory description.

Three kinds of source:
- `digits`: the UCI handwritten digits that scikit-learn ships (8x8 grayscale).
- a `.npz` file with `x_train, y_train, x_test, y_test` (the layout of Keras'
  `mnist.npz`); for multi-input/multi-output `--model_fn` models, arrays named
  `x_train_<input>` / `y_train_<output>` (and `_test_`) feed each named layer.
- a folder with one sub-folder of images per class, split into training and
  validation by a hash of each file's relative path, so the same file always
  lands in the same split on any machine.

Only file names and arrays are held here; pixels of folder images are decoded
by the input pipeline (`trainer.inputs`).
"""
import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from trainer.config import Config
from trainer.errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class Split:
    """One split. `x` is a dict of arrays (arrays source) or None (files source)."""

    labels: np.ndarray
    x: Optional[Dict[str, np.ndarray]] = None
    y: Optional[Dict[str, np.ndarray]] = None  # Extra label arrays of multi-output models.
    paths: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    """A loaded source: its class names and its two splits."""

    kind: str  # "arrays" or "files"
    class_names: List[str]
    train: Split
    validation: Split

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> Optional[Tuple[int, ...]]:
        """The stored shape of one image for single-input arrays, else None."""
        if self.kind == "arrays" and set(self.train.x) == {"x"}:
            return self.train.x["x"].shape[1:]
        return None

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Examples per class in each split, by class name."""
        out = {}
        for name, split in (("train", self.train), ("validation", self.validation)):
            ids, n = np.unique(split.labels, return_counts=True)
            out[name] = {self.class_names[int(i)]: int(c) for i, c in zip(ids, n)}
        return out


def in_validation(key: str, fraction: float) -> bool:
    """Deterministic split: hashes `key` into [0, 1) and compares with `fraction`."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def load(config: Config) -> Dataset:
    """Loads the source named by `config.data`, filtered to `config.classes`.

    Raises:
        UsageError: a missing or unreadable source, an empty folder, absent classes,
            bad arrays or labels.
    """
    source = config.data
    if source == "digits":
        dataset = _load_digits(config.validation_split)
    elif source.endswith(".npz"):
        dataset = _load_npz(source)
    elif tf.io.gfile.isdir(source):
        dataset = _load_folder(source, config.validation_split)
    elif tf.io.gfile.exists(source):
        raise UsageError(f"--data={source} is neither 'digits', a .npz file nor a folder of class sub-folders")
    else:
        raise UsageError(f"--data={source} does not exist")
    if config.classes:
        dataset = _keep_classes(dataset, config.classes)
    for name, split in (("training", dataset.train), ("validation", dataset.validation)):
        if len(split) == 0:
            raise UsageError(f"--data={source} has no {name} examples "
                             f"(check --classes and --validation_split={config.validation_split})")
    return dataset


def _load_digits(validation_split: float) -> Dataset:
    from sklearn.datasets import load_digits  # Ships its data: no download.

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]  # 8x8x1, 0..255
    labels = digits.target.astype(np.int64)
    val = np.array([in_validation(f"digits/{i}", validation_split) for i in range(len(labels))])
    names = [str(i) for i in range(10)]
    return Dataset("arrays", names,
                   Split(labels[~val], x={"x": images[~val]}),
                   Split(labels[val], x={"x": images[val]}))


def _load_npz(path: str) -> Dataset:
    if not tf.io.gfile.exists(path):
        raise UsageError(f"--data={path} does not exist")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            arrays = dict(np.load(f, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise UsageError(f"--data={path} is not a readable .npz file ({e})") from None
    splits = []
    for part in ("train", "test"):
        xs = {k[len(f"x_{part}_"):]: v for k, v in arrays.items() if k.startswith(f"x_{part}_")}
        ys = {k[len(f"y_{part}_"):]: v for k, v in arrays.items() if k.startswith(f"y_{part}_")}
        if f"x_{part}" in arrays:
            xs["x"] = arrays[f"x_{part}"]
        if f"y_{part}" in arrays:
            ys["y"] = arrays[f"y_{part}"]
        if not xs or not ys:
            missing = [k for k in (f"x_{part}", f"y_{part}") if k not in arrays]
            raise UsageError(f"--data={path} lacks the arrays {', '.join(missing)} "
                             f"(expected {', '.join(NPZ_KEYS)}; it has {', '.join(sorted(arrays)) or 'none'})")
        lengths = {k: len(v) for k, v in {**xs, **ys}.items()}
        if len(set(lengths.values())) != 1:
            raise UsageError(f"--data={path}: the {part} arrays have different lengths {lengths}")
        label_key = "y" if "y" in ys else sorted(ys)[0]
        labels = ys.pop(label_key) if label_key == "y" else ys[label_key]
        labels = np.asarray(labels)
        if labels.ndim > 1 and labels.shape[-1] > 1:
            labels = labels.argmax(-1)  # One-hot stored labels.
        labels = labels.reshape(len(labels))
        if not np.issubdtype(labels.dtype, np.integer) and not np.all(labels == np.round(labels)):
            raise UsageError(f"--data={path}: y_{part} must hold integer class ids")
        if labels.min() < 0:
            raise UsageError(f"--data={path}: y_{part} holds a negative label ({labels.min()})")
        splits.append(Split(labels.astype(np.int64), x=xs, y=ys or None))
    num_classes = int(max(s.labels.max() for s in splits)) + 1
    return Dataset("arrays", [str(i) for i in range(num_classes)], splits[0], splits[1])


def _load_folder(root: str, validation_split: float) -> Dataset:
    class_names = sorted(d for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(os.path.join(root, d)))
    class_names = [d.rstrip("/") for d in class_names]
    if not class_names:
        raise UsageError(f"--data={root} has no class sub-folders (expected <data>/<class>/<image files>)")
    split_files = ([], []), ([], [])
    for label, name in enumerate(class_names):
        files = sorted(_image_files(os.path.join(root, name)))
        if not files:
            raise UsageError(f"--data={root}: class folder '{name}' has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        for rel in files:
            paths, labels = split_files[in_validation(f"{name}/{rel}", validation_split)]
            paths.append(os.path.join(root, name, rel))
            labels.append(label)
    train, val = (Split(np.array(labels, np.int64), paths=paths) for paths, labels in split_files)
    return Dataset("files", class_names, train, val)


def _image_files(folder: str) -> List[str]:
    """Image files under `folder` (recursively), relative to it."""
    found = []
    for dirpath, _, filenames in tf.io.gfile.walk(folder):
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), folder))
    return found


def _keep_classes(dataset: Dataset, classes: Sequence[str]) -> Dataset:
    """Keeps only `classes`, relabelled 0..k-1 in the order given."""
    absent = [c for c in classes if c not in dataset.class_names]
    if absent:
        raise UsageError(f"--classes names {', '.join(absent)}, absent from --data; "
                         f"its classes are: {', '.join(dataset.class_names)}")
    old_to_new = {dataset.class_names.index(c): i for i, c in enumerate(classes)}

    def subset(split: Split) -> Split:
        keep = np.isin(split.labels, list(old_to_new))
        labels = np.array([old_to_new[int(v)] for v in split.labels[keep]], np.int64)
        return Split(
            labels,
            x={k: v[keep] for k, v in split.x.items()} if split.x is not None else None,
            y={k: v[keep] for k, v in split.y.items()} if split.y is not None else None,
            paths=[p for p, k in zip(split.paths, keep) if k] if split.paths is not None else None)

    return Dataset(dataset.kind, list(classes), subset(dataset.train), subset(dataset.validation))
