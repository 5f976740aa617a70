"""Shared fixtures: tiny real data made on the spot, and a way to run the CLI."""
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import trainer  # noqa: F401 - first: on TensorFlow 2.16+ it makes tf.keras the Keras 2 API (tf-keras).
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_image_folder(root: Path, classes=("cats", "dogs"), per_class=12, size=16, seed=0) -> Path:
    """Writes small images whose class is visible in their colour: class i is bright in channel i."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            pixels[..., label % 3] += 180
            ext = ("png", "jpg", "bmp")[i % 3]
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


class PerEngine(dict):
    """A module fixture's value per engine, made on first use: a leg that deselects one engine's cases (Keras engine
    cases are slow on TF 2.15) trains nothing for that engine."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, engine):
        self[engine] = made = self._make(engine)
        return made


def run_cli(*args, env=None, timeout=300):
    """Runs `python -m trainer.task` as a real subprocess; returns CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("AIP_MODEL_DIR", None) if env is None or "AIP_MODEL_DIR" not in env else None
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def last_run_log(model_dir) -> str:
    """The part of <model_dir>/train.log written by the latest run (TensorFlow's full log included)."""
    return (Path(model_dir) / "train.log").read_text().rsplit("\n===== run started ", 1)[-1]


@pytest.fixture
def gcs_server(tmp_path, monkeypatch):
    """A loopback GCS server with a bucket `test-bucket`; yields (server, storage client)."""
    from gcs_server import GcsServer
    from trainer.cloud import gcs as gcs_lib

    server = GcsServer(str(tmp_path / "gcs-data"))
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    client = gcs_lib.client()
    client.create_bucket("test-bucket")
    yield server, client
    server.stop()


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs mounted at `path` (e.g. options "size=700k", "size=1m,ro"), for full or read-only disks;
    the test is skipped where mounting is not allowed (it needs root, as on the project's machines and CI)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# The layers (`-m unit`, `-m integration`, `-m slow`): tests/unit/ holds pure functions of trainer/ (no training, no
# subprocess), seconds in all; every other test trains or runs a real program. A runtime without tf.estimator
# (TensorFlow 2.16+) collects only the unit layer and the modules marked `tf221`, without importing the others.
ESTIMATOR_RUNTIME = importlib.util.find_spec("tensorflow_estimator") is not None
TESTS = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: matrices and README runs; `make test-slow` (and CI) runs them, "
                                       "`make test` does not")
    config.addinivalue_line("markers", "unit: tests/unit, pure functions of trainer/ (`make test-fast`)")
    config.addinivalue_line("markers", "integration: real training runs and programs (every test outside tests/unit)")
    config.addinivalue_line("markers", "keras_engine: the Keras engine's own tests (slow on TensorFlow 2.15)")
    config.addinivalue_line("markers", "quick: integration tests quick enough for `make test-fast`")
    config.addinivalue_line("markers", "tf221: runs on TensorFlow 2.21 too (the Keras engine's runtime)")


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if ESTIMATOR_RUNTIME or path.suffix != ".py" or not path.name.startswith("test_") or TESTS / "unit" in path.parents:
        return None
    return "pytest.mark.tf221" not in path.read_text()


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker("unit" if TESTS / "unit" in Path(str(item.fspath)).parents else "integration")
        # Each runtime's `make test` leg runs its own engine's cases; the Keras engine's on TensorFlow 2.15 (the
        # modules marked keras_engine, the `engine=keras` cases of the others) go to `make test-slow`, since the
        # TF 2.21 leg runs them where that engine's users train.
        params = getattr(getattr(item, "callspec", None), "params", {})
        if ESTIMATOR_RUNTIME and (item.get_closest_marker("keras_engine") or params.get("engine") == "keras"):
            item.add_marker("slow")
