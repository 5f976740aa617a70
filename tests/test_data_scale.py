"""TFRecords, the converter, label vocabularies, augmentation, bad files, image-bytes serving."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import make_image_folder
from trainer.data import conversion as convert
from trainer.data import sources as data_lib
from trainer.engines.estimator import estimator as estimator_lib
from trainer.stages import experiment
from trainer.data import inputs
from trainer.model import models
from trainer.data import tfrecords
from trainer.config import Config, parse_augment
from trainer.errors import UsageError

FAST = dict(save_checkpoints_steps=20, eval_throttle_secs=0, batch_size=8, image_size=16, backbone="small_cnn")


def add_bad_and_odd_files(root):
    """A corrupt JPEG, an empty file and a text file, plus grayscale, RGBA and palette images."""
    (root / "cats" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (root / "cats" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("this is a text file")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (20, 14), dtype=np.uint8), "L").save(root / "dogs" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (9, 30, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).convert("P").save(root / "cats" / "pal.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "cats" / "anim.gif")


def test_folder_with_bad_files_trains_and_reports_them(tmp_path):
    root = make_image_folder(tmp_path / "images")
    add_bad_and_odd_files(root)
    summary = experiment.train_and_evaluate(Config(data=str(root), model_dir=str(tmp_path / "run"),
                                                   train_steps=20, **FAST))
    assert summary["global_step"] == 20
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert sorted(p.split("/")[-1] for p in info["skipped_files"]) == ["corrupt.jpg", "empty.png", "notes.jpg"]
    total = sum(info["counts"]["train"].values()) + sum(info["counts"]["validation"].values())
    assert total == 24 + 4  # the generated images plus gray, rgba, palette and gif


def test_too_many_bad_files_is_an_error(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=3)
    add_bad_and_odd_files(root)
    with pytest.raises(UsageError, match="3 of 13 files are unreadable.*--max_bad_fraction=0.1"):
        data_lib.load(Config(data=str(root)))


def test_converter_round_trip_and_two_shard_training(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=15)
    add_bad_and_odd_files(root)
    out = tmp_path / "records"
    report = convert.convert(str(root), str(out), shards=2, max_bad_fraction=0.2)
    assert len(report["skipped_files"]) == 3
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if ".tmp-" in n], names  # The rerun removed the hidden half shard.
    assert [n for n in names if n.startswith("train")] == ["train-00000-of-00002.tfrecord",
                                                           "train-00001-of-00002.tfrecord"]
    assert (out / "labels.txt").read_text() == "cats\ndogs\n"
    folder = data_lib.load(Config(data=str(root), max_bad_fraction=0.2))
    # Reading the shards back gives the folder's own split, per class.
    train = data_lib.load(Config(data=str(out / "train-*"), eval_data=str(out / "validation-*")))
    assert train.class_names == ["cats", "dogs"]
    assert train.counts()["train"] == folder.counts()["train"]
    records = list(tf.data.TFRecordDataset(sorted(str(p) for p in out.glob("validation-*"))))
    assert len(records) == len(folder.validation)
    # Re-running overwrites in place and leaves no temporary files.
    convert.convert(str(root), str(out), shards=2, max_bad_fraction=0.2)
    assert not list(out.glob("*.tmp-*"))
    summary = experiment.train_and_evaluate(Config(
        data=str(out / "train-*"), eval_data=str(out / "validation-*"), model_dir=str(tmp_path / "run"),
        train_steps=20, **FAST))
    assert summary["global_step"] == 20 and summary["accuracy"] > 0.5


def test_tfrecord_glob_without_eval_data_is_split_by_hash(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=40, size=8)
    out = tmp_path / "records"
    convert.convert(str(root), str(out), shards=2)
    ds = data_lib.load(Config(data=str(out / "train-*"), validation_split=0.25))
    assert len(ds.train) + len(ds.validation) == len(list(tf.data.TFRecordDataset(
        sorted(str(p) for p in out.glob("train-*")))))
    assert 0.1 < len(ds.validation) / (len(ds.train) + len(ds.validation)) < 0.4
    again = data_lib.load(Config(data=str(out / "train-*"), validation_split=0.25))
    np.testing.assert_array_equal(again.validation.labels, ds.validation.labels)


def test_labels_file_fixes_the_order_and_can_extend_the_vocabulary(tmp_path, image_folder):
    labels = tmp_path / "labels.txt"
    labels.write_text("tench\ndogs\ngoldfish\ncats\n")
    ds = data_lib.load(Config(data=str(image_folder), labels_file=str(labels)))
    assert ds.class_names == ["tench", "dogs", "goldfish", "cats"]
    for path, label in zip(ds.train.paths, ds.train.labels):
        assert f"/{ds.class_names[label]}/" in path
    labels.write_text("dogs\nbirds\n")
    with pytest.raises(UsageError, match="absent from the label vocabulary: cats"):
        data_lib.load(Config(data=str(image_folder), labels_file=str(labels)))


def test_tfrecord_class_text_is_looked_up_in_the_vocabulary():
    record = tfrecords.encode_example(b"x", 0, "dogs")
    _, label = tfrecords.parse(tf.constant(record), ["tench", "cats", "dogs"])
    assert int(label) == 2
    _, unknown = tfrecords.parse(tf.constant(record), ["tench", "cats"])
    assert int(unknown) == -1
    _, by_id = tfrecords.parse(tf.constant(tfrecords.encode_example(b"x", 1)), ["a", "b"])
    assert int(by_id) == 1


def first_batch(split, training, augment, seed=1):
    fn = inputs.make_input_fn(split, training=training, batch_size=8, input_names=["image"],
                              output_names=["probabilities"], label_mode="sparse", num_classes=2, image_size=16,
                              seed=seed, augment=augment, class_names=["cats", "dogs"])
    features, _ = next(iter(fn()))
    return features["image"].numpy()


def test_augmentation_changes_training_images_only_and_is_reproducible(image_folder):
    split = data_lib.load(Config(data=str(image_folder))).train
    ops = parse_augment("flip,rotate:0.1,zoom:0.2")
    plain = first_batch(split, True, ())
    augmented = first_batch(split, True, ops)
    assert augmented.shape == plain.shape
    assert not np.allclose(augmented, plain)  # Same shuffle seed, so the same images underneath.
    np.testing.assert_array_equal(augmented, first_batch(split, True, ops))
    np.testing.assert_array_equal(first_batch(split, False, ops), first_batch(split, False, ()))


def test_augment_flag_parsing():
    assert parse_augment("flip,rotate:0.1,zoom:0.2") == (("flip", 0.0), ("rotate", 0.1), ("zoom", 0.2))
    with pytest.raises(UsageError, match="unknown operation 'shear'"):
        parse_augment("shear:0.1")
    with pytest.raises(UsageError, match="between 0 and 1"):
        parse_augment("zoom:2")


def test_saved_model_takes_jpeg_bytes_and_agrees_with_estimator_predict(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=16, size=20)
    config = Config(data=str(root), model_dir=str(tmp_path / "run"), train_steps=30, export="final", **FAST)
    summary = experiment.train_and_evaluate(config)
    serving = tf.saved_model.load(summary["export"]).signatures["serving_default"]
    assert set(serving.structured_input_signature[1]) == {"image_bytes"}
    dataset = data_lib.load(config)
    paths = dataset.validation.paths
    jpegs = []
    for p in paths:  # Serve JPEG bytes, whatever the files' formats.
        image = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        jpegs.append(tf.io.encode_jpeg(image, quality=95).numpy())
    served = serving(image_bytes=tf.constant(jpegs))
    assert served["probabilities"].shape == (len(paths), 2)
    jpeg_dir = tmp_path / "jpegs"
    jpeg_dir.mkdir()
    for i, raw in enumerate(jpegs):
        (jpeg_dir / f"{i}.jpg").write_bytes(raw)
    jpeg_split = data_lib.Split(dataset.validation.labels, paths=[str(jpeg_dir / f"{i}.jpg") for i in range(len(jpegs))])
    tf.keras.backend.clear_session()
    model = models.build_model(config, 2)
    models.compile_model(model, config)
    estimator = estimator_lib.make_estimator(model, estimator_lib.make_run_config(config), dataset.class_names)
    input_fn = inputs.make_input_fn(jpeg_split, training=False, batch_size=8, input_names=model.input_names,
                                    output_names=model.output_names, label_mode="sparse", num_classes=2,
                                    image_size=16)
    predicted = [p["classes"] for p in estimator.predict(input_fn)]
    assert [c.decode() for c in served["classes"].numpy()] == [c.decode() for c in predicted]
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               [p["probabilities"] for p in estimator.predict(input_fn)], rtol=1e-4, atol=1e-5)


def test_converting_again_leaves_no_stale_or_half_written_shard(tmp_path):
    """Trial c111/c112/c115: `--shards=2` into a folder of a `--shards=4` conversion kept both sets, so the
    train-* glob read every image twice; SRE trial: a killed conversion's `*.tmp-*` shard matched the glob."""
    root = make_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "records"
    convert.convert(str(root), str(out), shards=4)
    first = {p.name for p in out.glob("*.tfrecord")}
    assert "train-00003-of-00004.tfrecord" in first
    (out / "train-00000-of-00004.tfrecord.tmp-deadbeef").write_bytes(b"half a record")
    report = convert.convert(str(root), str(out), shards=2)
    now = sorted(p.name for p in out.iterdir())
    assert sorted(report["removed_stale_shards"]) == sorted(first - set(now))
    assert [n for n in now if n.startswith("train")] == ["train-00000-of-00002.tfrecord",
                                                         "train-00001-of-00002.tfrecord"]
    assert not [n for n in now if "-of-00004" in n or ".tmp-" in n]
    again = data_lib.load(Config(data=str(out / "train-*"), eval_data=str(out / "validation-*")))
    folder = data_lib.load(Config(data=str(root)))
    assert again.counts()["train"] == folder.counts()["train"]


def test_a_class_name_labels_txt_cannot_hold_is_refused(tmp_path):
    """SRE trial: a folder name with a line break became a phantom class, and a real one's records were dropped."""
    root = make_image_folder(tmp_path / "images", classes=("cats", "dogs\nbirds"), per_class=4)
    with pytest.raises(UsageError, match="line break"):
        convert.convert(str(root), str(tmp_path / "records"), shards=1)


@pytest.mark.parametrize("name", [" dogs", "dogs ", "dogs\t"])
def test_a_class_name_with_outer_spaces_is_refused(tmp_path, name):
    """labels.txt is read back stripped: the records of ' dogs' would have matched no class and been dropped."""
    root = make_image_folder(tmp_path / "images", classes=("cats", name), per_class=4)
    with pytest.raises(UsageError, match="leading or trailing"):
        convert.convert(str(root), str(tmp_path / "records"), shards=1)


def test_a_killed_conversion_never_leaves_a_shard_the_glob_reads(tmp_path, monkeypatch):
    """SRE trial B1: a half-written shard was named `train-...tfrecord.tmp-*`, which `train-*` matches: training
    on the glob after a killed conversion (without rerunning it) read the half shard."""
    root = make_image_folder(tmp_path / "images", per_class=6)
    out = tmp_path / "records"
    seen = []
    import tensorflow as tf

    original = tf.io.TFRecordWriter

    def killed(path, *args):  # The first shard's writer: its name is all a glob sees mid-write.
        seen.append(path)
        raise KeyboardInterrupt
    monkeypatch.setattr(tf.io, "TFRecordWriter", killed)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(str(root), str(out), shards=2)
    monkeypatch.setattr(tf.io, "TFRecordWriter", original)
    assert seen and not tf.io.gfile.glob(str(out / "train-*")), seen
    assert os.path.basename(seen[0]).startswith(".train-00000-of-00002.tfrecord.tmp-")
    (out / os.path.basename(seen[0])).write_bytes(b"half a record")  # What a kill would have left.
    convert.convert(str(root), str(out), shards=2)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if ".tmp-" in n], names  # The rerun removed the hidden half shard.
    assert [n for n in names if n.startswith("train")] == ["train-00000-of-00002.tfrecord",
                                                           "train-00001-of-00002.tfrecord"]


def test_convert_output_inside_data_is_refused(tmp_path):
    """Trial c201/c202: the shards' folder inside --data became a class folder of the next training."""
    root = make_image_folder(tmp_path / "images", per_class=4)
    with pytest.raises(UsageError, match="inside --data"):
        convert.convert(str(root), str(root / "records"), shards=1)
    with pytest.raises(UsageError, match="is the --data folder itself"):  # Wrappers trial U9.
        convert.convert(str(root), str(root) + "/", shards=1)
    assert sorted(p.name for p in root.iterdir()) == ["cats", "dogs"]


def test_convert_without_validation_prints_no_empty_line_and_says_why_shards_went(tmp_path, capsys):
    """Wrappers trial U8: `validation: ` printed empty, and the validation shards of an earlier conversion were said
    to be of "another --shards" when --shards was the same."""
    from trainer import convert as convert_cli

    root = make_image_folder(tmp_path / "images", per_class=4)
    out = str(tmp_path / "records")
    assert convert_cli.main([f"--data={root}", f"--output={out}", "--shards=1"]) == 0
    capsys.readouterr()
    assert convert_cli.main([f"--data={root}", f"--output={out}", "--shards=1", "--validation_split=0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "validation: " not in err and not any(line.strip() == "validation:" for line in err), err
    removed = [line for line in err if line.startswith("removed ")]
    assert len(removed) == 1 and "--validation_split=0 does not write" in removed[0], err
