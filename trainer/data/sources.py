"""Data sources: what `--data` names, loaded into an in-memory description.

Four kinds of source:
- `digits`: the UCI handwritten digits that scikit-learn ships (8x8 grayscale).
- a `.npz` file with `x_train, y_train, x_test, y_test` (the layout of Keras'
  `mnist.npz`); for multi-input/multi-output `--model_fn` models, arrays named
  `x_train_<input>` / `y_train_<output>` (and `_test_`) feed each named layer.
- a folder with one sub-folder of images per class, split into training and
  validation by a hash of each file's relative path, so the same file always
  lands in the same split on any machine. Unreadable files are found by one
  parallel decode pass, skipped and reported.
- a glob of TFRecord shards (local or gs://) in the schema of `trainer.data.tfrecords`.

`--eval_data` names a separate evaluation source (folder or glob); `--labels_file`
fixes the class vocabulary and its order.

Only file names and arrays are held here; pixels of folder images are decoded
by the input pipeline (`trainer.data.inputs`).
"""
import dataclasses
import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.data import tfrecords
from trainer.config import Config
from trainer.errors import UsageError
from trainer.data.image_files import (IMAGE_EXTENSIONS, list_image_files, real_path, file_problem,  # noqa: F401
                                       find_unreadable, is_hidden)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass
class Split:
    """One split: arrays (`x`), image files (`paths`) or TFRecord shards (`shards`).

    `labels` are the class ids, one per example; None for TFRecords that were not
    scanned (a --labels_file was given), whose size is then unknown.
    """

    labels: Optional[np.ndarray]
    x: Optional[Dict[str, np.ndarray]] = None
    y: Optional[Dict[str, np.ndarray]] = None  # Extra label arrays of multi-output models.
    paths: Optional[List[str]] = None
    shards: Optional[List[str]] = None
    part: str = "all"  # For shards: all records, or the train/validation side of the hash split.
    fraction: float = 0.0

    def __len__(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    @property
    def known_size(self) -> bool:
        return self.labels is not None


@dataclasses.dataclass
class Dataset:
    """A loaded source: its class names and its two splits."""

    kind: str  # "arrays", "files" or "tfrecord"
    class_names: List[str]
    train: Split
    validation: Split
    skipped_files: List[str] = dataclasses.field(default_factory=list)
    # Files of a folder that are not images of a supported kind, counted by extension ('.webp': 3).
    ignored_files: Dict[str, int] = dataclasses.field(default_factory=dict)

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
            if not split.known_size:
                continue
            ids, n = np.unique(split.labels, return_counts=True)
            out[name] = {self.class_names[int(i)]: int(c) for i, c in zip(ids, n)}
        return out


def in_validation(key: str, fraction: float) -> bool:
    """Deterministic split: hashes `key` into [0, 1) and compares with `fraction`."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def load(config: Config, require_validation: bool = True) -> Dataset:
    """Loads the source named by `config.data`, filtered to `config.classes`.

    Raises:
        UsageError: a missing or unreadable source, an empty folder, absent classes,
            bad arrays or labels.
    """
    source = config.data
    tfrecords.forget_faults()  # Bad records are found afresh for each load: shards may have been repaired.
    vocabulary = read_labels_file(config.labels_file) if config.labels_file else None
    if config.labels_file and config.classes:
        raise UsageError("--labels_file and --classes exclude each other: the labels file fixes the classes")
    fraction = 0.0 if config.eval_data else config.validation_split
    # An existing folder is a folder, whatever its name says ('images.npz', 'x.tfrecord', 'run[1]').
    if source == "digits":
        dataset = digits_arrays(config.validation_split)
    elif tf.io.gfile.isdir(source):
        dataset = _load_folder("data", source, fraction, vocabulary)
    elif source.endswith(".npz"):
        dataset = _load_npz(source, images=not config.model_fn)
    elif is_tfrecord_glob(source):
        dataset = _load_tfrecords("data", source, fraction, vocabulary, config.max_bad_fraction)
    elif tf.io.gfile.exists(source):
        raise UsageError(f"--data={source} is neither 'digits', a .npz file, a TFRecord glob nor a folder "
                         "of class sub-folders")
    else:
        raise UsageError(f"--data={source} does not exist")
    if config.eval_data:
        if dataset.kind == "arrays":
            raise UsageError("--eval_data goes with a folder or TFRecord --data (.npz and digits carry their "
                             "own test split)")
        dataset = _with_eval_source(dataset, config, vocabulary or dataset.class_names)
    if vocabulary and dataset.kind == "arrays":
        dataset = dataclasses.replace(dataset, class_names=list(vocabulary))
    if config.classes:
        dataset = _keep_classes(dataset, config.classes)
    if dataset.kind == "files":
        dataset = _drop_unreadable(dataset, config.max_bad_fraction, source, config.max_image_mb * 2**20)
    for name, split in (("training", dataset.train), ("validation", dataset.validation)):
        if name == "validation" and not require_validation:
            continue
        if split.known_size and len(split) == 0:
            raise UsageError(f"--{'eval_data' if name == 'validation' and config.eval_data else 'data'}="
                             f"{config.eval_data if name == 'validation' and config.eval_data else source} "
                             f"has no {name} examples (check --classes and --validation_split)")
    return dataset


def is_tfrecord_glob(source: str) -> bool:
    """A glob or a file name that says TFRecord (folders are told apart by isdir)."""
    return any(c in source for c in "*?[") or ".tfrecord" in os.path.basename(source)


def read_labels_file(path: str) -> List[str]:
    """One class name per line, blank lines ignored; the order fixes the label ids."""
    if not tf.io.gfile.exists(path):
        raise UsageError(f"--labels_file={path} does not exist")
    with tf.io.gfile.GFile(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < 2:
        raise UsageError(f"--labels_file={path} must name at least 2 classes, one per line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"--labels_file={path} names {', '.join(duplicates[:5])} more than once")
    return names


def _with_eval_source(dataset: Dataset, config: Config, class_names: List[str]) -> Dataset:
    """Replaces the validation split with --eval_data, labelled by class name."""
    source = config.eval_data
    if tf.io.gfile.isdir(source):
        evaluation = _load_folder("eval_data", source, 0.0, class_names)
    elif is_tfrecord_glob(source):
        evaluation = _load_tfrecords("eval_data", source, 0.0, class_names, config.max_bad_fraction)
    else:
        raise UsageError(f"--eval_data={source} is neither a folder nor a TFRecord glob (or does not exist)")
    if evaluation.kind != dataset.kind:
        # Mixed kinds would need two pipelines' worth of code paths; say so plainly.
        raise UsageError(f"--eval_data={source} must be of the same kind as --data ({dataset.kind})")
    return dataclasses.replace(dataset, validation=evaluation.train, class_names=class_names,
                               ignored_files=_add_counts(dataset.ignored_files, evaluation.ignored_files))


def digits_arrays(validation_split: float) -> Dataset:
    from sklearn.datasets import load_digits  # Ships its data: no download.

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)[..., None]  # 8x8x1, 0..255
    labels = digits.target.astype(np.int64)
    val = np.array([in_validation(f"digits/{i}", validation_split) for i in range(len(labels))])
    names = [str(i) for i in range(10)]
    return Dataset("arrays", names,
                   Split(labels[~val], x={"x": images[~val]}),
                   Split(labels[val], x={"x": images[val]}))


def _check_arrays(path: str, part: str, xs: Dict[str, np.ndarray], labels: np.ndarray, images: bool) -> None:
    """Refuses arrays the pipeline would crash on, or train on silently wrong (NaN pixels)."""
    for key, x in xs.items():
        name = f"x_{part}" if key == "x" else f"x_{part}_{key}"
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise UsageError(f"--data={path}: {name} has dtype {x.dtype}; expected numbers (uint8 or float "
                             "pixels)")
        if len(x) == 0:
            raise UsageError(f"--data={path}: {name} has 0 examples (shape {x.shape}); each split needs some")
        if images and key == "x" and not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3, 4))):
            raise UsageError(f"--data={path}: {name} has shape {x.shape}; expected images as N,H,W or N,H,W,C "
                             "with C = 1, 3 or 4 channels (reshape flat pixel rows to N,H,W first)")
        if np.issubdtype(x.dtype, np.floating):
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                raise UsageError(f"--data={path}: {name} holds NaN or infinite values in {int(bad.sum())} "
                                 f"example(s), the first at index {int(np.argmax(bad))}; fix or drop them")
    if labels.dtype.kind in "USO":
        sample = ", ".join(repr(v) for v in labels.reshape(-1)[:3].tolist())
        raise UsageError(f"--data={path}: y_{part} holds {labels.dtype} values ({sample}, ...); expected "
                         "integer class ids 0..k-1")
    if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
        raise UsageError(f"--data={path}: y_{part} holds NaN or infinite labels; expected integer class ids")


def _load_npz(path: str, images: bool = True) -> Dataset:
    if not tf.io.gfile.exists(path):
        raise UsageError(f"--data={path} does not exist")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            arrays = dict(np.load(f, allow_pickle=False))
    except (ValueError, OSError) as e:
        raise UsageError(f"--data={path} is not a readable .npz file ({e})") from None
    for part in ("train", "test"):  # Every array named before any is inspected: the clearest error first.
        if not any(k == f"x_{part}" or k.startswith(f"x_{part}_") for k in arrays) or \
                not any(k == f"y_{part}" or k.startswith(f"y_{part}_") for k in arrays):
            missing = [k for k in NPZ_KEYS if k not in arrays]
            raise UsageError(f"--data={path} lacks the arrays {', '.join(missing)} "
                             f"(expected {', '.join(NPZ_KEYS)}; it has {', '.join(sorted(arrays)) or 'none'})")
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
        scalars = [k for k, v in {**xs, **ys}.items() if np.ndim(v) == 0]
        if scalars:
            raise UsageError(f"--data={path}: the {part} array {scalars[0]} is a single value, not one per example")
        lengths = {k: len(v) for k, v in {**xs, **ys}.items()}
        if len(set(lengths.values())) != 1:
            raise UsageError(f"--data={path}: the {part} arrays have different lengths {lengths}")
        label_key = "y" if "y" in ys else sorted(ys)[0]
        labels = ys.pop(label_key) if label_key == "y" else ys[label_key]
        labels = np.asarray(labels)
        _check_arrays(path, part, xs, labels, images)
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


def _load_folder(flag: str, root: str, validation_split: float, vocabulary: Optional[List[str]]) -> Dataset:
    folders = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                     if not is_hidden(d.rstrip("/")) and tf.io.gfile.isdir(os.path.join(root, d)))
    if not folders:
        raise UsageError(f"--{flag}={root} has no class sub-folders (expected <folder>/<class>/<image files>)")
    if vocabulary:
        unknown = [d for d in folders if d not in vocabulary]
        if unknown:
            raise UsageError(f"--{flag}={root} has class folders absent from the label vocabulary: "
                             f"{', '.join(unknown[:10])}")
    class_names = list(vocabulary) if vocabulary else folders
    split_files = ([], []), ([], [])
    ignored: Dict[str, int] = {}
    # Folders already walked, by real path: a symlink back up the tree (a/loop -> ..) is not followed again.
    seen = {real_path(root)} | {real_path(os.path.join(root, name)) for name in folders}
    for name in folders:
        files = sorted(list_image_files(os.path.join(root, name), ignored, seen))
        if not files:
            raise UsageError(f"--{flag}={root}: class folder '{name}' has no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        for rel in files:
            paths, labels = split_files[in_validation(f"{name}/{rel}", validation_split)]
            paths.append(os.path.join(root, name, rel))
            labels.append(class_names.index(name))
    if ignored:
        logging.warning("--%s=%s: ignored %d file(s) that are not images of a supported kind (%s): %s", flag,
                        root, sum(ignored.values()), ", ".join(IMAGE_EXTENSIONS),
                        ", ".join(f"{n} {ext or '(no extension)'}" for ext, n in sorted(ignored.items())))
    train, val = (Split(np.array(labels, np.int64), paths=paths) for paths, labels in split_files)
    return Dataset("files", class_names, train, val, ignored_files=ignored)


def _add_counts(a: Dict[str, int], b: Dict[str, int]) -> Dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


def _load_tfrecords(flag: str, pattern: str, validation_split: float,
                    vocabulary: Optional[List[str]], max_bad_fraction: float = 0.1) -> Dataset:
    """TFRecord shards. Without a vocabulary, one pass reads labels (not images) for class names and counts.

    Corrupt or truncated records met by that pass are skipped and counted (`tfrecords.skip_corrupt`).
    """
    shards = sorted(tf.io.gfile.glob(pattern))
    if not shards:
        raise UsageError(f"--{flag}={pattern} matches no TFRecord files")
    parts = ("all", "all") if not validation_split else ("train", "validation")
    splits = [Split(None, shards=shards, part=part, fraction=validation_split) for part in parts]
    if vocabulary:
        return Dataset("tfrecord", list(vocabulary), splits[0], splits[1])
    texts = {}
    for split in splits if validation_split else splits[:1]:
        labels = []
        try:
            for label, text in tfrecords.read_labels(shards, split.part, validation_split, f"--{flag}={pattern}",
                                                     max_bad_fraction):
                labels.append(label)
                if text:
                    texts[int(label)] = text.decode()
        except tf.errors.OpError as e:
            raise UsageError(f"--{flag}={pattern}: not readable as TFRecords in the image schema "
                             f"({type(e).__name__}: {e.message.splitlines()[0][:200]})") from None
        split.labels = np.array(labels, np.int64)
    if not validation_split:
        splits[1].labels = splits[0].labels
    if len(splits[0]) and splits[0].labels.min() < 0:
        raise UsageError(f"--{flag}={pattern}: some records have no image/class/label")
    num_classes = int(max(s.labels.max() for s in splits if len(s))) + 1 if len(splits[0]) else 0
    names = [texts.get(i, str(i)) for i in range(num_classes)]
    return Dataset("tfrecord", names, splits[0], splits[1])


def _keep_classes(dataset: Dataset, classes: Sequence[str]) -> Dataset:
    """Keeps only `classes`, relabelled 0..k-1 in the order given."""
    if dataset.kind == "tfrecord":
        raise UsageError("--classes does not apply to TFRecord data; use --labels_file")
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

    return Dataset(dataset.kind, list(classes), subset(dataset.train), subset(dataset.validation),
                   ignored_files=dataset.ignored_files)


def _drop_unreadable(dataset: Dataset, max_bad_fraction: float, source: str, max_bytes: int) -> Dataset:
    all_paths = dataset.train.paths + dataset.validation.paths
    special = {p: problem for p in all_paths for problem in [file_problem(p, max_bytes)] if problem}
    for path, problem in sorted(special.items())[:5]:
        logging.warning("not reading %s: %s", path, problem)
    bad = set(special) | set(find_unreadable([p for p in all_paths if p not in special]))
    if not bad:
        return dataset
    names = sorted(bad)
    logging.warning("skipping %d unreadable image file(s) of %d: %s%s", len(bad), len(all_paths),
                    ", ".join(names[:5]), ", ..." if len(bad) > 5 else "")
    if len(bad) == len(all_paths):
        raise UsageError(f"--data={source}: no readable image among {len(all_paths)} files")
    if len(bad) > max_bad_fraction * len(all_paths):
        raise UsageError(f"--data={source}: {len(bad)} of {len(all_paths)} files are unreadable, more than "
                         f"--max_bad_fraction={max_bad_fraction}; first: {', '.join(names[:3])}")

    def keep(split: Split) -> Split:
        kept = [(p, y) for p, y in zip(split.paths, split.labels) if p not in bad]
        return Split(np.array([y for _, y in kept], np.int64), paths=[p for p, _ in kept])

    return dataclasses.replace(dataset, train=keep(dataset.train), validation=keep(dataset.validation),
                               skipped_files=names)
