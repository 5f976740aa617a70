"""The input pipeline per engine (issue 37): the tf.data autotuner where the loop keeps its iterators (the Keras
engine) and not where a Session closes per evaluation (the Estimator's, tests/test_performance.py); decoded training
images cached as uint8 (3 bytes a pixel: 4x more images fit the cache than as float32), within half a grey level of
the decoded floats."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO  # noqa: F401 - puts the repository on the path.
from trainer.config import Config
from trainer.data import inputs
from trainer.data import sources as data

pytestmark = pytest.mark.tf221

SIZE = 16


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(24):
        (tmp_path / "jpegs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20 + i % 3, 23, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "jpegs" / f"c{i % 2}" / f"{i}.jpg", quality=90)
    return tmp_path / "jpegs"


def pipeline(split, autotune=False):
    return inputs.make_input_fn(split, training=True, batch_size=4, input_names=["image"], output_names=["out"],
                                label_mode="sparse", num_classes=2, image_size=SIZE, seed=3, autotune=autotune)()


def batches(ds, count):
    iterator = iter(ds)
    return [next(iterator) for _ in range(count)]


def test_the_keras_engines_pipeline_autotunes_and_yields_the_same_batches(folder):
    split = data.load(Config(data=str(folder))).train
    fixed, tuned = pipeline(split), pipeline(split, autotune=True)
    assert fixed.options().autotune.enabled is False and tuned.options().autotune.enabled is True
    for (fa, la), (fb, lb) in zip(batches(fixed, 8), batches(tuned, 8)):  # Same order: a restart relies on it.
        np.testing.assert_array_equal(la["out"].numpy(), lb["out"].numpy())
        np.testing.assert_array_equal(fa["image"].numpy(), fb["image"].numpy())


def test_decoded_images_are_cached_as_uint8_within_half_a_grey_level(folder, monkeypatch):
    split = data.load(Config(data=str(folder))).train
    exact = len(split) * SIZE * SIZE * inputs.CACHED_BYTES_PER_PIXEL  # Fits as uint8; as float32 it needed 4x.
    assert inputs.CACHED_BYTES_PER_PIXEL == 3
    monkeypatch.setattr(inputs, "CACHE_BYTES", 0)
    decoded = batches(pipeline(split), 12)  # Every image decoded each epoch: the floats.
    monkeypatch.setattr(inputs, "CACHE_BYTES", exact)
    ds = pipeline(split)
    iterator = iter(ds)
    cached = [next(iterator) for _ in range(12)]
    for (fa, la), (fb, lb) in zip(decoded, cached):
        np.testing.assert_array_equal(la["out"].numpy(), lb["out"].numpy())
        a, b = fa["image"].numpy(), fb["image"].numpy()
        assert b.dtype == np.float32 and np.all(b == np.round(b)) and np.abs(a - b).max() <= 0.5 + 1e-4
    for path in folder.rglob("*.jpg"):  # After more than an epoch every image is in the cache: no file is read.
        path.unlink()
    assert len([next(iterator) for _ in range(10)]) == 10
    monkeypatch.setattr(inputs, "CACHE_BYTES", exact - 1)  # One byte short: not cached, the files are read.
    with pytest.raises(tf.errors.NotFoundError):
        batches(pipeline(split), 2)
