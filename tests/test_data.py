"""Data sources: digits, .npz, class folders and their deterministic split."""
import numpy as np
import pytest

from conftest import make_image_folder
from trainer.data import sources as data
from trainer.config import Config
from trainer.errors import UsageError

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.


def load(**kw):
    return data.load(Config(**kw))


def test_digits_split_and_classes():
    ds = load(data="digits")
    assert ds.class_names == [str(i) for i in range(10)]
    assert len(ds.train) + len(ds.validation) == 1797
    assert 0.15 < len(ds.validation) / 1797 < 0.25
    assert ds.image_shape == (8, 8, 1)
    sub = load(data="digits", classes=("1", "0"))
    assert sub.class_names == ["1", "0"]
    ones = ds.train.x["x"][ds.train.labels == 1]
    np.testing.assert_array_equal(sub.train.x["x"][sub.train.labels == 0], ones)


def test_folder_split_is_deterministic_per_file(tmp_path):
    root = make_image_folder(tmp_path / "a", per_class=30)
    first = load(data=str(root))
    val_names = {p.split("/")[-1] for p in first.validation.paths}
    assert 0 < len(val_names) < 60
    # Adding files elsewhere never moves an existing file between splits.
    make_image_folder(tmp_path / "a", classes=("cats", "dogs", "birds"), per_class=40, seed=1)
    second = load(data=str(root))
    kept = {p.split("/")[-1] for p in second.validation.paths if p.split("/")[-2] in ("cats", "dogs")}
    assert val_names <= kept
    assert second.class_names == ["birds", "cats", "dogs"]


def test_folder_classes_keeps_order_and_relabels(image_folder):
    ds = load(data=str(image_folder), classes=("dogs",  "cats"))
    assert ds.class_names == ["dogs", "cats"]
    for split in (ds.train, ds.validation):
        for path, label in zip(split.paths, split.labels):
            assert f"/{ds.class_names[label]}/" in path


@pytest.mark.parametrize("setup, fragment", [
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "cats").mkdir(parents=True), "class folder 'cats' has no images"),
])
def test_folder_errors(tmp_path, setup, fragment):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(UsageError, match=fragment):
        load(data=str(root))


def test_absent_class_lists_the_classes(image_folder):
    with pytest.raises(UsageError, match="--classes names birds.*cats, dogs"):
        load(data=str(image_folder), classes=("birds",))


def test_npz_layout_and_errors(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (20, 6, 6)), y_train=np.arange(20) % 3,
             x_test=rng.integers(0, 255, (5, 6, 6)), y_test=np.arange(5) % 3)
    ds = load(data=str(path))
    assert ds.num_classes == 3 and len(ds.train) == 20 and ds.image_shape == (6, 6)
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(UsageError, match="lacks the arrays x_test, y_test"):
        load(data=str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "len.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(2), x_test=np.zeros((1, 2)),
             y_test=np.zeros(1))
    with pytest.raises(UsageError, match="different lengths"):
        load(data=str(tmp_path / "len.npz"))
