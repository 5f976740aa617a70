"""Promotion when things go wrong: a champion folder that cannot be written, a champion that cannot be loaded, a
bucket that stops answering mid-promotion, a lost promotion race, a champion whose classes are unknown or are
binary classes of other names. Each is decided and said in one line, never a traceback or a dead end.

Most cases call `promotion.run` on tiny hand-made Keras models (no training); the ones whose contract is the
console of a real run (an `error:` line before training, a warning at the start) run the entry point in-process.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging

from conftest import tmpfs
from trainer import task
from trainer.retrain import champion_store as champion
from trainer.retrain import stores
from trainer.cloud import gcs
from trainer.retrain import promotion
from trainer.config import Config

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.

QUICK = ["--data=digits", "--backbone=mlp", "--train_steps=20", "--eval_throttle_secs=0"]


def cli(capsys, *args):
    """The entry point in-process: (exit status, stderr lines); a traceback fails the test."""
    flags.FLAGS.unparse_flags()
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # As the command line has it: the console's own lines show.
    try:
        task.main(task._parse_flags(["trainer", *args]))
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        absl_logging.set_verbosity(verbosity)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return status, err.splitlines()


def errors(lines):
    return [line for line in lines if line.startswith("error:")]


# Tiny models and data: feature 0's sign decides the label (label 1 where x0 > 0).
def data(n=64, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


def input_fn():
    x, y = data()
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def tiny_model(path, kernel, units=1):
    """A saved Dense model on 4 features: binary (units=1, sigmoid) or softmax; `kernel` [4, units]."""
    inputs = tf.keras.Input((4,))
    dense = tf.keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")
    model = tf.keras.Model(inputs, dense(inputs))
    dense.set_weights([np.asarray(kernel, np.float32).reshape(4, units), np.zeros(units, np.float32)])
    model.save(path)
    return str(path)


def make_champion(tmp_path, champion_dir, h5, class_names, version="v1"):
    """A champion version from a keras_model.h5 (the SavedModel is a stand-in: promotion never reads it)."""
    export = tmp_path / "champion-export"
    export.mkdir(exist_ok=True)
    (export / "saved_model.pb").write_text("model")
    store = champion.open_store(champion_dir)
    pointer, token = store.read_pointer()
    metrics = {"accuracy": 0.99, "metric": "accuracy"}
    if class_names is not None:
        metrics["class_names"] = list(class_names)
    assert champion.promote(store, token, version, str(export), str(h5), metrics, "earlier-run",
                            pointer["version"] if pointer else None)
    return store


def challenger_run(tmp_path, kernel, units=1, name="run"):
    """A model_dir with a challenger's keras_model.h5 and an export folder, as training leaves them."""
    run = tmp_path / name
    (run / "export").mkdir(parents=True)
    (run / "export" / "saved_model.pb").write_text("model")
    tiny_model(run / "keras_model.h5", kernel, units)
    return str(run), str(run / "export")


PERFECT = [[10.0], [0], [0], [0]]  # P(label 1) = sigmoid(10 x0): right on every example.
REVERSED = [[-10.0], [0], [0], [0]]  # Perfect when its output means label 0.
COIN = [[0.0], [0], [0], [0]]  # 0.5 everywhere: accuracy 0.5 on this data.


def promote_with(tmp_path, champion_dir, class_names, kernel=COIN, units=1, label_mode="binary", **kw):
    model_dir, export = challenger_run(tmp_path, kernel, units)
    config = Config(data="digits", label_mode=label_mode, champion_dir=champion_dir, model_dir=model_dir, **kw)
    return promotion.run(config, model_dir, export, input_fn, class_names)


# --- 1. A champion folder that cannot be written; a champion that cannot be loaded --------------------------

@pytest.fixture
def read_only_dir(tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        yield mount


def test_a_read_only_champion_dir_is_one_error_line_before_training(capsys, tmp_path, read_only_dir):
    """SRE trial B11: the run trained, then died at promotion in a traceback."""
    for champion_dir in (read_only_dir, read_only_dir / "champions" / "digits"):  # The folder, or one to create.
        run = tmp_path / f"run-{len(champion_dir.parts)}"
        status, lines = cli(capsys, *QUICK, f"--model_dir={run}", f"--champion_dir={champion_dir}")
        assert status == 1 and len(errors(lines)) == 1, lines[-20:]
        assert errors(lines)[0].startswith(f"error: --champion_dir={champion_dir} is not writable (Read-only file "
                                           "system"), errors(lines)
        assert not run.exists(), "nothing written: training never started"


def test_an_unloadable_champion_is_replaced_and_said_so(tmp_path):
    """Before: `not promoting` at every later run, a dead end until someone repaired the folder by hand."""
    champion_dir = str(tmp_path / "champion")
    h5 = tiny_model(tmp_path / "good.h5", PERFECT)
    store = make_champion(tmp_path, champion_dir, h5, ["a", "b"])
    damaged = store.keras_model("v1")
    with open(damaged, "r+b") as f:  # Truncated: the end of the HDF5 file is gone.
        f.truncate(os.path.getsize(damaged) // 2)
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["promoted"] is True and record["champion_version"] == "v1"
    assert record["reason"].startswith("the champion version v1 cannot be loaded (OSError: ") and \
        record["reason"].endswith("; replaced without a comparison"), record["reason"]
    assert record["champion_unloadable"].startswith("OSError") and record["compared_by"] == "none"
    assert store.read_pointer()[0]["version"] == record["version"] != "v1"


def test_an_unloadable_champion_is_warned_of_at_the_start_of_a_run(capsys, tmp_path):
    champion_dir = tmp_path / "champion"
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is no HDF5 file" * 50)
    make_champion(tmp_path, str(champion_dir), garbage, [str(i) for i in range(10)])
    # Warm-starting from it cannot work: said before anything is written.
    status, lines = cli(capsys, *QUICK, f"--model_dir={tmp_path / 'warm'}", f"--champion_dir={champion_dir}",
                        "--warm_start_from=champion")
    assert status == 1 and len(errors(lines)) == 1 and not (tmp_path / "warm").exists(), lines[-10:]
    assert errors(lines)[0].startswith("error: --warm_start_from=champion: the champion version v1 cannot be loaded")
    status, lines = cli(capsys, *QUICK, f"--model_dir={tmp_path / 'run'}", f"--champion_dir={champion_dir}")
    assert status == 0, lines[-20:]
    (warning,) = [i for i, line in enumerate(lines) if "the champion version v1 cannot be loaded" in line and
                  line.startswith("WARNING:")]
    (decision,) = [i for i, line in enumerate(lines) if line.startswith("promotion: promoted")]
    header = next(i for i, line in enumerate(lines) if line.startswith("model_dir: "))
    first_eval = next(i for i, line in enumerate(lines) if line.startswith("eval @ step"))
    assert warning < header < first_eval < decision, lines
    assert lines[decision].startswith("promotion: promoted (the champion version v1 cannot be loaded (OSError:")
    record = json.loads((tmp_path / "run" / "run_info.json").read_text())["promotion"]
    assert record["promoted"] is True and record["champion_unloadable"].startswith("OSError")
    assert json.loads((champion_dir / champion.POINTER).read_text())["version"] == record["version"]


# --- 2. The bucket stops answering during promotion -------------------------------------------------------

@pytest.fixture
def quick_retries(monkeypatch):
    """Retries give up after 2 s (the real deadline, 120 s, is for real outages)."""
    real = gcs.retry
    monkeypatch.setattr(gcs, "retry", lambda deadline=None: real(2.0))


def test_a_bucket_that_stops_answering_mid_promotion_is_one_error_line(capsys, tmp_path, gcs_server, monkeypatch,
                                                                       quick_retries):
    """SRE trial B13: four chained tracebacks, and the objects uploaded so far left in the bucket."""
    server, client = gcs_server
    champion_dir = "gs://test-bucket/champions/digits"
    real_upload, uploads = gcs.upload, []

    def upload_then_outage(local, uri, *args, **kwargs):
        if uploads:  # The first object went up; the server is gone for the next.
            server.stop()
        uploads.append(uri)
        return real_upload(local, uri, *args, **kwargs)

    monkeypatch.setattr(gcs, "upload", upload_then_outage)
    status, lines = cli(capsys, *QUICK, f"--model_dir={tmp_path / 'run'}", f"--champion_dir={champion_dir}")
    assert status == 1 and len(errors(lines)) == 1, lines[-30:]
    (line,) = errors(lines)
    assert line.startswith(f"error: --champion_dir={champion_dir}: Cloud Storage became unreachable while copying "
                           "the challenger to version "), line
    assert "CHAMPION.json is unchanged" in line and "could not be removed" in line and "never listed" in line
    version = line.split("to version ", 1)[1].split(" ", 1)[0]
    assert line.endswith(f"the trained model is kept in {tmp_path / 'run'}: run the same command again to retry "
                         "the promotion")
    # The server back: the half-uploaded version is no version.
    server.start()
    store = champion.open_store(champion_dir)
    names = lambda: [b.name for b in client.list_blobs("test-bucket", prefix=f"champions/digits/{version}/")]  # noqa
    assert len(names()) == 1 and store.versions() == [] and store.read_pointer() == (None, 0)
    # The same command again promotes; the leftover, younger than 10 minutes (it might be another run's upload in
    # flight), is kept by that promotion, and removed by one 10 minutes later.
    monkeypatch.setattr(gcs, "upload", real_upload)
    status, lines = cli(capsys, *QUICK, f"--model_dir={tmp_path / 'run'}", f"--champion_dir={champion_dir}")
    assert status == 0 and "promotion: promoted (no champion yet)" in lines, lines[-20:]
    (again,) = store.versions()
    assert len(names()) == 1
    monkeypatch.setattr(stores, "LEFTOVER_AGE_SECS", 0.0)
    make_champion(tmp_path, champion_dir, tiny_model(tmp_path / "m.h5", PERFECT), ["a", "b"], version="v2")
    assert names() == [] and store.versions() == sorted([again, "v2"])


def test_a_failed_upload_removes_what_it_uploaded(tmp_path, gcs_server, monkeypatch, quick_retries):
    """The bucket still answers (one object's upload failed for good): the partial version is deleted."""
    from google.api_core import exceptions

    _, client = gcs_server
    real_upload, uploads = gcs.upload, []

    def second_upload_fails(local, uri, *args, **kwargs):
        uploads.append(uri)
        if len(uploads) == 2:
            raise exceptions.ServiceUnavailable("503 backend error")
        return real_upload(local, uri, *args, **kwargs)

    monkeypatch.setattr(gcs, "upload", second_upload_fails)
    with pytest.raises(champion.UsageError, match="the objects uploaded so far were removed"):
        make_champion(tmp_path, "gs://test-bucket/c", tiny_model(tmp_path / "m.h5", PERFECT), ["a", "b"])
    assert len(uploads) == 2 and list(client.list_blobs("test-bucket", prefix="c/")) == []


# --- 3. The loser of a promotion race ---------------------------------------------------------------------

def check_race(tmp_path, champion_dir):
    export = tmp_path / "export"
    export.mkdir()
    (export / "saved_model.pb").write_text("model")
    h5 = tiny_model(tmp_path / "m.h5", PERFECT)
    store = champion.open_store(champion_dir)
    _, token = store.read_pointer()
    assert champion.promote(store, token, "winner", str(export), h5, {"accuracy": 0.9}, "a", None)
    assert champion.promote(store, token, "loser", str(export), h5, {"accuracy": 0.9}, "b", None) is False
    assert store.versions() == ["winner"] and not store.is_complete("loser")
    assert store.read_pointer()[0]["version"] == "winner"
    report = {}  # What the caller is told, for its promotion line.
    assert champion.promote(store, token, "loser", str(export), h5, {"accuracy": 0.9}, "b", None,
                            report=report) is False
    assert report == {"removed": True, "error": None} and store.versions() == ["winner"]
    return store


def test_the_loser_of_a_race_removes_its_copy_locally(tmp_path):
    """SRE trial W5: the loser's copy stayed, complete-looking: listed by `history`, accepted by `rollback --to`."""
    check_race(tmp_path, str(tmp_path / "champion"))
    assert sorted(os.listdir(tmp_path / "champion")) == [".lock", "CHAMPION.json", "winner"]


def test_the_loser_of_a_race_removes_its_copy_on_gcs(tmp_path, gcs_server):
    _, client = gcs_server
    check_race(tmp_path, "gs://test-bucket/champions/race")
    assert not [b.name for b in client.list_blobs("test-bucket", prefix="champions/race/loser/")]


def test_a_lost_race_is_said_in_the_promotion_line(tmp_path, monkeypatch):
    champion_dir = str(tmp_path / "champion")
    real = champion.LocalStore.write_pointer

    def another_run_first(self, pointer, token):  # Another run's promotion lands between our read and our write.
        monkeypatch.setattr(champion.LocalStore, "write_pointer", real)
        make_champion(tmp_path, champion_dir, tiny_model(tmp_path / "other.h5", PERFECT), ["a", "b"], "other")
        return real(self, pointer, token)

    monkeypatch.setattr(champion.LocalStore, "write_pointer", another_run_first)
    said = []
    monkeypatch.setattr(promotion.console, "say", lambda message, *args: said.append(message % args))
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["promoted"] is False and record["lost_version_removed"] is True and record["version"] is None
    assert record["reason"] == (f"another run replaced CHAMPION.json first (lost the race); not promoted; its copy "
                                f"{champion_dir}/{record['lost_version']} was removed")
    assert said[-1] == f"promotion: not promoted ({record['reason']})"
    assert champion.open_store(champion_dir).versions() == ["other"]


# --- 4. Champions whose classes are unknown, binary champions of other names -------------------------------

def test_a_binary_champion_with_its_classes_in_the_other_order_is_scored_by_name(tmp_path):
    """Scored by index before: a perfect champion scored 0.0 and lost to a coin."""
    champion_dir = str(tmp_path / "champion")
    make_champion(tmp_path, champion_dir, tiny_model(tmp_path / "c.h5", REVERSED), ["b", "a"])
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["champion"] == 1.0 and record["challenger"] == pytest.approx(0.5, abs=0.15)
    assert record["promoted"] is False and record["compared_by"] == "name"
    assert record["reason"].endswith("; the champion's classes are this run's in the other order (b,a): its output "
                                     "is read by class name")


def test_a_binary_champion_of_other_classes_is_not_compared(tmp_path):
    """Scored by index before: a model of `cat,dog` judged on `ok,defect` data, and kept."""
    champion_dir = str(tmp_path / "champion")
    make_champion(tmp_path, champion_dir, tiny_model(tmp_path / "c.h5", PERFECT), ["cat", "dog"])
    record = promote_with(tmp_path, champion_dir, ["ok", "defect"])
    assert record["promoted"] is True and record["compared_by"] == "none" and record["champion"] is None
    assert record["reason"] == ("the champion v1 is a binary model of other classes (cat,dog) than this run's "
                                "(ok,defect): promoted without a champion comparison")


def test_a_champion_of_unknown_classes_is_compared_by_index_only_when_the_outputs_match(tmp_path):
    """Older champions' metrics.json has no class_names: they were compared by index, silently."""
    champion_dir = str(tmp_path / "champion")
    store = make_champion(tmp_path, champion_dir, tiny_model(tmp_path / "c.h5", PERFECT), None)
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["promoted"] is False and record["champion"] == 1.0 and record["compared_by"] == "index"
    assert record["reason"].endswith("; the champion's classes are unknown (no class_names in its metrics.json): "
                                     "compared by output index, both models having outputs [[1]]")
    # Other outputs (3 classes against this run's 2): no comparison by index; said, and decided.
    three = tiny_model(tmp_path / "c3.h5", np.eye(4, 3) * 5, units=3)
    make_champion(tmp_path, str(tmp_path / "c3"), three, None)
    record = promote_with(tmp_path / "x", str(tmp_path / "c3"), ["a", "b"], kernel=np.eye(4, 2), units=2,
                          label_mode="sparse")
    assert record["promoted"] is True and record["compared_by"] == "none" and record["champion"] is None
    assert record["reason"] == ("the champion's classes are unknown (no class_names in its metrics.json), and the "
                                "champion v1 has outputs [[3]] where this run's model has [[2]]: they cannot be "
                                "compared, so the challenger is promoted")
    assert store.versions() == ["v1"]


def test_a_bucket_unreachable_at_the_start_is_one_error_line(capsys, tmp_path, gcs_server, quick_retries):
    server, _ = gcs_server
    server.stop()
    status, lines = cli(capsys, *QUICK, f"--model_dir={tmp_path / 'run'}", "--champion_dir=gs://test-bucket/c")
    assert status == 1 and len(errors(lines)) == 1 and not (tmp_path / "run").exists(), lines[-20:]
    assert errors(lines)[0].startswith("error: --champion_dir=gs://test-bucket/c: Cloud Storage cannot be reached ("
                                       ), errors(lines)
    assert "Connection refused" in errors(lines)[0]
