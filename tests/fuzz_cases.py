"""A seeded generator of runs a newcomer might try, and the contract each must keep.

Each draw makes data (digits, an .npz, or an image folder, with or without a defect), picks
flags (valid or not, compatible or not) and sometimes resumes the run with one flag changed.
The contract, for every run: exit 0 with every output file, finite weights and an accuracy in
[0, 1] (above chance when the draw is plainly learnable), or exit 1 with exactly one `error:`
line. Anything else (another exception, i.e. a traceback, two error lines, a missing file)
is a violation. Used by tests/test_fuzz.py (a few draws) and scripts/fuzz.py (many).
"""
import contextlib
import io
import json
import os
import random
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

NPZ_DEFECTS = ("none",) * 8 + ("nan", "inf", "empty_test", "flat", "one_d", "strings", "two_channels",
               "five_channels", "string_labels", "single_class", "negative_label")
FOLDER_DEFECTS = ("none",) * 6 + ("hidden", "resource_forks", "unsupported", "corrupt", "empty_class",
                  "glob_name", "symlink_loop", "all_corrupt", "single_class")
MISTAKES = (("seed", -1), ("seed", 2**33), ("batch_size", 0), ("batch_size", 100000), ("validation_split", 0.0),
            ("validation_split", 1.5), ("augment", "blur"), ("augment", "zoom:2"), ("augment", "flip:0.5"),
            ("head_units", "x"), ("dropout", 1.0), ("freeze", "99"), ("image_size", 4), ("optimizer", "adagrad"),
            ("train_steps", 0), ("learning_rate", -1.0), ("export", "best_only"), ("loss", "hinge"),
            ("loss", "sparse_categorical_crossentropy"), ("loss", "categorical_crossentropy"),
            ("loss", "binary_crossentropy"), ("backbone", "alexnet"), ("eval_steps", 0), ("cut_layer", "fc9"),
            ("max_bad_fraction", 2.0), ("hypertune_metric", "f1"), ("num_classes", 1), ("strategy", "horovod"))
RESUME_CHANGES = ("more_steps", "more_steps", "classes_order", "optimizer", "learning_rate", "freeze",
                  "backbone", "label_mode")


def _npz(rng: random.Random, root: Path, defect: str):
    gen = np.random.default_rng(rng.randrange(1000))
    k = 1 if defect == "single_class" else rng.choice((2, 3))
    def split(n):
        y = np.arange(n) % k
        x = gen.random((n, 6, 6)).astype(np.float32) * 60 + (y[:, None, None] * 80)  # Class shows in brightness.
        return x, y
    x_train, y_train = split(48)
    x_test, y_test = split(12)
    if defect == "nan":
        x_train[rng.randrange(48), 1, 1] = np.nan
    elif defect == "inf":
        x_test[0, 0, 0] = np.inf
    elif defect == "empty_test":
        x_test, y_test = x_test[:0], y_test[:0]
    elif defect == "flat":
        x_train = x_train.reshape(48, 36)
    elif defect == "one_d":
        x_test = x_test[:, 0, 0]
    elif defect == "strings":
        x_train = x_train.astype(str)
    elif defect == "two_channels":
        x_train = np.stack([x_train, x_train], -1)
    elif defect == "five_channels":
        x_test = np.stack([x_test] * 5, -1)
    elif defect == "string_labels":
        y_train = np.array([f"class{v}" for v in y_train])
    elif defect == "negative_label":
        y_test = y_test - 1
    path = root / f"data-{defect}.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path), k


def _folder(rng: random.Random, root: Path, defect: str):
    name = "imgs[1]*" if defect == "glob_name" else "imgs"
    k = 1 if defect == "single_class" else rng.choice((2, 3))
    classes = ["cats", "dogs", "eels"][:k]
    folder = root / name
    gen = np.random.default_rng(rng.randrange(1000))
    for label, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(rng.choice((6, 10))):
            pixels = gen.integers(0, 60, (12, 12, 3)).astype(np.uint8)
            pixels[..., label] += 180
            Image.fromarray(pixels).save(folder / cls / f"{cls}_{i}.{('png', 'jpg')[i % 2]}")
    if defect == "hidden":
        (folder / ".ipynb_checkpoints" / "x").mkdir(parents=True)
        (folder / "__MACOSX").mkdir()
    elif defect == "resource_forks":
        for f in list((folder / classes[0]).iterdir()):
            (f.parent / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07")
    elif defect == "unsupported":
        (folder / classes[-1] / "a.webp").write_bytes(b"RIFFxxxxWEBP")
        (folder / classes[-1] / "b.tiff").write_bytes(b"II*\x00")
    elif defect == "corrupt":
        (folder / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    elif defect == "empty_class":
        (folder / "zzz_empty").mkdir()
    elif defect == "symlink_loop":
        os.symlink("..", folder / classes[0] / "loop")
    elif defect == "all_corrupt":
        for f in folder.rglob("*.*"):
            f.write_bytes(b"garbage")
    return str(folder), k


def draw(seed: int, root: Path) -> dict:
    """One case: {'runs': [argv, ...], 'learnable': bool, 'what': description}."""
    rng = random.Random(seed)
    kind = rng.choice(("digits", "npz", "folder"))
    defect = "none"
    classes: List[str] = []
    if kind == "digits":
        classes = rng.sample([str(i) for i in range(10)], rng.choice((1, 2, 2, 3, 3, 10)))
        data, k = "digits", len(classes)
        if rng.random() < 0.1:
            classes.append("12")
    elif kind == "npz":
        defect = rng.choice(NPZ_DEFECTS)
        data, k = _npz(rng, root, defect)
    else:
        defect = rng.choice(FOLDER_DEFECTS)
        data, k = _folder(rng, root, defect)
    label_mode = rng.choice(("sparse", "sparse", "categorical", "binary"))
    loss = rng.choice((None, None, None, None, "mse" if label_mode != "sparse" else None))
    optimizer = rng.choice(("adam", "adam", "sgd", "rmsprop"))
    learning_rate = rng.choice((1e-3, 5e-3, 1e-2))
    steps = rng.choice((1, 5, 40, 40))
    flags = {
        "data": data, "model_dir": str(root / "run"), "backbone": rng.choice(("mlp", "mlp", "small_cnn")),
        "train_steps": steps, "batch_size": rng.choice((4, 8, 16)),
        "label_mode": label_mode, "optimizer": optimizer, "learning_rate": learning_rate,
        "seed": rng.choice((0, 7, 42)), "export": rng.choice(("best", "latest", "final")),
        "validation_split": rng.choice((0.2, 0.3, 0.5)),
        "augment": rng.choice(("", "", "flip", "rotate:0.1,zoom:0.2")),
        "head_units": rng.choice(("", "", "16")), "dropout": rng.choice((0.0, 0.0, 0.3)),
        "freeze": rng.choice((None, None, "all", "none", "1", "-1")),
        "image_size": rng.choice((0, 0, 8)), "save_checkpoints_steps": rng.choice((20, 1000)),
        "eval_throttle_secs": 0, "loss": loss,
    }
    mistake = None
    if rng.random() < 0.3:  # One slip of the kind users make, on top of any data defect.
        mistake = rng.choice(MISTAKES)
        flags[mistake[0]] = mistake[1]
        loss = flags["loss"]
    if classes:
        flags["classes"] = ",".join(classes) + ("," if rng.random() < 0.2 else "")
    argv = [f"--{k}={v}" for k, v in flags.items() if v is not None]
    runs = [argv]
    change = None
    if rng.random() < 0.35:
        change = rng.choice(RESUME_CHANGES)
        second = dict(flags)
        if change == "more_steps":
            second["train_steps"] = steps + 5
        elif change == "classes_order" and classes:
            second["classes"] = ",".join(reversed(classes))
        elif change == "optimizer":
            second["optimizer"] = "sgd" if optimizer != "sgd" else "adam"
        elif change == "learning_rate":
            second["learning_rate"] = learning_rate * 10
        elif change == "freeze":
            second["freeze"] = "all" if flags["freeze"] != "all" else "none"
        elif change == "backbone":
            second["backbone"] = "small_cnn" if flags["backbone"] == "mlp" else "mlp"
        elif change == "label_mode":
            second["label_mode"] = "categorical" if label_mode != "categorical" else "sparse"
        runs.append([f"--{k}={v}" for k, v in second.items() if v is not None])
    learnable = (defect in ("none", "hidden", "unsupported", "resource_forks") and steps == 40 and k >= 2
                 and optimizer == "adam" and loss is None and mistake is None and not flags["augment"]
                 # A frozen trunk of random weights learns too slowly for 40 steps (seen: 0.51 -> 0.89 at 200).
                 and flags["freeze"] in (None, "none"))
    return {"runs": runs, "learnable": learnable, "num_classes": k,
            "what": f"seed {seed}: {kind} defect={defect} mistake={mistake} resume={change} " + " ".join(argv[2:])}


def run_in_process(argv: List[str]):
    """Runs the trainer's entry point in this process; returns (status, stderr text, exception or None)."""
    from absl import flags

    from trainer import task

    flags.FLAGS.unparse_flags()
    err = io.StringIO()
    status, escaped = 0, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            task.main(task._parse_flags(["trainer", *argv]))
        except SystemExit as e:
            status = e.code
        except BaseException as e:  # A traceback for the user: always a violation.
            escaped = e
    return status, err.getvalue(), escaped


def check(case: dict, status, stderr: str, escaped, model_dir: str) -> List[str]:
    """The contract's violations for one run (empty when kept)."""
    if escaped is not None:
        return [f"uncaught {type(escaped).__name__}: {str(escaped)[:300]}"]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if status == 1:
        return [] if len(errors) == 1 else [f"exit 1 with {len(errors)} error lines"]
    if status != 0:
        return [f"exit status {status}"]
    problems = [f"exit 0 with error line {e}" for e in errors]
    run = Path(model_dir)
    for name in ("model_summary.json", "run_info.json", "eval_metrics.json", "keras_model.h5"):
        if not (run / name).exists():
            problems.append(f"exit 0 without {name}")
    if problems:
        return problems
    info = json.loads((run / "run_info.json").read_text())
    if not info.get("export") or not (Path(info["export"]) / "saved_model.pb").exists():
        problems.append("exit 0 without an exported SavedModel")
    metrics = json.loads((run / "eval_metrics.json").read_text())
    accuracy = metrics.get("accuracy")
    if accuracy is None or not 0.0 <= accuracy <= 1.0:
        problems.append(f"accuracy {accuracy}")
    elif case["learnable"] and accuracy <= 1.0 / case["num_classes"] + 0.05:
        problems.append(f"learnable draw at chance: accuracy {accuracy:.3f}")
    import h5py

    with h5py.File(run / "keras_model.h5", "r") as f:
        weights = []
        f["model_weights"].visititems(lambda _, v: weights.append(v[()]) if isinstance(v, h5py.Dataset) else None)
    if not all(np.all(np.isfinite(w)) for w in weights if np.issubdtype(np.asarray(w).dtype, np.floating)):
        problems.append("exit 0 with non-finite weights in keras_model.h5")
    return problems


def run_case(seed: int, root: Path) -> List[str]:
    """Draws case `seed` under `root` and runs it; returns its violations, each prefixed by the case."""
    root.mkdir(parents=True, exist_ok=True)
    case = draw(seed, root)
    problems = []
    for i, argv in enumerate(case["runs"]):
        status, stderr, escaped = run_in_process(argv)
        for problem in check(case, status, stderr, escaped, str(root / "run")):
            problems.append(f"{case['what']} (run {i + 1}): {problem}")
        if status != 0:
            break
    return problems
