"""One champion for both runtimes (TensorFlow 2.15 + Keras 2.15, TensorFlow 2.21 + tf-keras 2.21), and a class added
by a retraining is never stuck behind the old champion (new-user trial 2026-12-04, #4, #5, #6).

The cross-runtime cases run both runtimes as subprocesses, whichever runs pytest: on TensorFlow 2.21 the other venv
is TRAINER_TF215_PYTHON (as in tests/test_keras_engine.py, set by `make test`); on TensorFlow 2.15 it is
TRAINER_TF221_PYTHON or, when that is unset, the repository's .venv-keras. Without it they are skipped. The rest
(hand-made probabilities and tiny models, a garbage champion, a config no Keras knows) runs on either runtime."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from test_promotion_faults import PERFECT, make_champion, promote_with, tiny_model
from trainer.config import Config
from trainer.model import keras_files
from trainer.retrain import champion_store as champion
from trainer.retrain import promotion

pytestmark = pytest.mark.slow  # The cross-runtime matrix (TF 2.15 and 2.21 processes): `make test-slow` (CI runs it).

ON_TF215 = tuple(int(p) for p in tf.__version__.split(".")[:2]) <= (2, 15)


def _other_python():
    if not ON_TF215:
        return os.environ.get("TRAINER_TF215_PYTHON") or None  # Empty: the TF 2.21 leg ran without .venv.
    found = os.environ.get("TRAINER_TF221_PYTHON") or str(REPO / ".venv-keras" / "bin" / "python")
    return found if os.path.exists(found) else None


OTHER = _other_python()
PYTHONS = {"tf215": sys.executable if ON_TF215 else OTHER, "tf221": OTHER if ON_TF215 else sys.executable}
needs_both = pytest.mark.skipif(OTHER is None, reason="needs the other runtime's venv (TRAINER_TF215_PYTHON on "
                                "TensorFlow 2.21; TRAINER_TF221_PYTHON or .venv-keras on TensorFlow 2.15)")
TINY = ["--data=digits", "--backbone=small_cnn", "--image_size=16", "--eval_throttle_secs=0"]


def env():
    # Each runtime's trainer package sets TF_USE_LEGACY_KERAS itself where tf-keras is installed; TF 2.15 fails
    # to import tf.keras with it set.
    return {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "AIP_MODEL_DIR")} | {
        "TF_CPP_MIN_LOG_LEVEL": "2"}


def task(runtime, cwd, *args):
    """`python -m trainer.task` on a runtime ("tf215", "tf221"), in `cwd` (relative paths are relative to it)."""
    result = subprocess.run([PYTHONS[runtime], "-m", "trainer.task", *TINY, *args], cwd=cwd, env=env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (runtime, args, result.stderr[-3000:])
    return result


def python(runtime, code, *args):
    result = subprocess.run([PYTHONS[runtime], "-c", code, *args], cwd=REPO, env=env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (runtime, result.stderr[-3000:])
    return result.stdout.strip().splitlines()[-1]


def promotion_record(model_dir):
    return json.loads((Path(model_dir) / "run_info.json").read_text())["promotion"]


def promotion_line(result):
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("promotion: ") and " (" in x]
    return line


def pointer(champion_dir):
    return json.loads((Path(champion_dir) / champion.POINTER).read_text())


# --- Task A: the champion, --base_model and --warm_start_from across the runtimes ------------------------------

@needs_both
@pytest.mark.parametrize("first,second,relative", [("tf221", "tf215", False), ("tf215", "tf221", True)],
                         ids=["tf221_champion_on_tf215", "tf215_champion_on_tf221_relative_dirs"])
def test_a_champion_of_one_runtime_is_challenged_on_the_other_on_the_same_numbers(tmp_path, first, second,
                                                                                   relative):
    """Trial #5: a TF 2.15 challenger replaced a TF 2.21 champion "without a comparison". Now the champion is
    scored by the other runtime exactly as its own runtime scored it (accuracy and loss within 1e-6), a weak
    challenger is not promoted, a strong one warm-started from it is."""
    where = (lambda name: name) if relative else (lambda name: str(tmp_path / name))
    champion_dir = where("champions/digits")
    task(first, tmp_path, "--train_steps=40", "--learning_rate=0.01", "--save_checkpoints_steps=40",
         f"--champion_dir={champion_dir}", f"--model_dir={where('runs/first')}")
    promoted = promotion_record(tmp_path / "runs/first")
    assert promoted["promoted"] is True and promoted["reason"] == "no champion yet"
    version = promoted["version"]
    metrics = json.loads((tmp_path / "champions/digits" / version / "metrics.json").read_text())
    assert metrics["tf_version"].startswith("2.21." if first == "tf221" else "2.15.")
    assert metrics["keras_version"].startswith(metrics["tf_version"][:5])
    h5 = tmp_path / "champions/digits" / version / "keras_model.h5"
    assert "optional" not in json.dumps(keras_files.read_model_config(str(h5)))  # Written neutral.
    before = (tmp_path / "champions/digits" / champion.POINTER).read_bytes()

    # A weak challenger on the other runtime: the champion scored there, on the same numbers, and kept.
    weak = task(second, tmp_path, "--train_steps=5", "--learning_rate=1e-4", "--save_checkpoints_steps=5",
                f"--champion_dir={champion_dir}", f"--model_dir={where('runs/weak')}")
    record = promotion_record(tmp_path / "runs/weak")
    assert record["compared_by"] == "name" and record["champion_version"] == version
    assert record["champion"] == pytest.approx(promoted["challenger"], abs=1e-6)
    assert record["promoted"] is False and record["challenger"] < record["champion"], record
    assert promotion_line(weak).startswith("promotion: not promoted (challenger accuracy")
    assert (tmp_path / "champions/digits" / champion.POINTER).read_bytes() == before
    # The loss too (the champion's own evaluation is in its metrics.json): the same model, the same data.
    task(second, tmp_path, "--train_steps=5", "--learning_rate=1e-4", "--save_checkpoints_steps=5",
         "--promote_metric=loss", f"--champion_dir={champion_dir}", f"--model_dir={where('runs/weak_loss')}")
    by_loss = promotion_record(tmp_path / "runs/weak_loss")
    assert by_loss["champion"] == pytest.approx(metrics["loss"], abs=1e-6) and by_loss["promoted"] is False
    print(f"champion {version} ({first}): accuracy {promoted['challenger']:.6f} on {first}, "
          f"{record['champion']:.6f} on {second}; loss {metrics['loss']:.6f} on {first}, {by_loss['champion']:.6f} "
          f"on {second} (differences {abs(record['champion'] - promoted['challenger']):.1e}, "
          f"{abs(by_loss['champion'] - metrics['loss']):.1e})")

    # Warm-started from the other runtime's champion: it loads, and a longer run beats it, by comparison.
    warm = task(second, tmp_path, "--train_steps=40", "--learning_rate=0.01", "--save_checkpoints_steps=40",
                "--warm_start_from=champion", f"--champion_dir={champion_dir}", f"--model_dir={where('runs/warm')}")
    assert "warm start: weights loaded from" in warm.stderr
    record = promotion_record(tmp_path / "runs/warm")
    assert record["compared_by"] == "name" and record["champion"] == pytest.approx(promoted["challenger"], abs=1e-6)
    assert record["promoted"] is (record["challenger"] > record["champion"]), record
    if record["promoted"]:
        assert pointer(tmp_path / "champions/digits")["version"] == record["version"]


LOAD_AND_PREDICT = """
import sys, json, numpy as np
import trainer
from trainer.model.keras_files import load_keras
x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
print(json.dumps(load_keras(sys.argv[1]).predict(x, verbose=0).tolist()))
"""

# A keras_model.h5 as TF 2.21 wrote it before the save side was neutral: the package's small_cnn, saved by plain
# Keras (with InputLayer `optional`).
SAVE_RAW = """
import sys
import trainer
import tensorflow as tf
from trainer.config import Config
from trainer.model import models
tf.keras.utils.set_random_seed(3)
model = models.build_model(Config(data="digits", backbone="small_cnn", image_size=16), 10)
model.save(sys.argv[1], include_optimizer=False, save_format="h5")
print("saved")
"""


@needs_both
def test_an_h5_written_on_tf221_loads_on_tf215(tmp_path):
    """Trial #4: `TypeError: Error when deserializing class 'InputLayer' using config={..., 'optional': False}`.
    A raw TF 2.21 file (with `optional`) loads on TF 2.15 through load_keras with the same predictions, and serves
    as --base_model; a run's keras_model.h5 written on TF 2.21 is neutral (TF 2.15's plain Keras loads it)."""
    raw = tmp_path / "raw221.h5"
    python("tf221", SAVE_RAW, str(raw))
    config = keras_files.read_model_config(str(raw))
    assert "optional" in json.dumps(config) and keras_files.file_versions(str(raw))["keras_version"].startswith("2.21")
    on_221 = np.array(json.loads(python("tf221", LOAD_AND_PREDICT, str(raw))))
    on_215 = np.array(json.loads(python("tf215", LOAD_AND_PREDICT, str(raw))))
    np.testing.assert_allclose(on_215, on_221, atol=1e-6)
    # In this process too (whichever runtime): the sanitized copy drops exactly what this Keras lacks.
    assert keras_files.load_keras(str(raw)).count_params() > 0
    dropped = keras_files.sanitized(config)[1]
    assert set(dropped) == ({"InputLayer.optional"} if ON_TF215 else set()), dropped

    # As --base_model on TF 2.15, relative path; the error line would have been one line anyway.
    task("tf215", tmp_path, "--base_model=raw221.h5", "--classes=0,1,2", "--train_steps=5",
         "--save_checkpoints_steps=5", "--model_dir=runs/based")
    info = json.loads((tmp_path / "runs/based/run_info.json").read_text())
    assert info["flags"]["base_model"] == "raw221.h5" and info["tf_version"].startswith("2.15")

    # A run on TF 2.21 writes a neutral keras_model.h5: TF 2.15's own load_model reads it as it is.
    task("tf221", tmp_path, "--train_steps=5", "--save_checkpoints_steps=5", f"--model_dir={tmp_path / 'runs/k'}")
    written = tmp_path / "runs/k/keras_model.h5"
    assert "optional" not in json.dumps(keras_files.read_model_config(str(written)))
    plain = ("import sys, trainer, tensorflow as tf; "
             "print(tf.keras.models.load_model(sys.argv[1], compile=False).count_params())")
    assert int(python("tf215", plain, str(written))) == int(python("tf221", plain, str(written))) > 0


@needs_both
def test_a_champion_written_before_the_fix_is_compared_not_replaced(tmp_path):
    """A TF 2.21 champion whose keras_model.h5 has `optional` (promoted before this fix): a TF 2.15 challenger of
    1 step is compared with it and not promoted (it was replaced "without a comparison")."""
    champion_dir = tmp_path / "champion"
    task("tf221", tmp_path, "--train_steps=40", "--learning_rate=0.01", "--save_checkpoints_steps=40",
         f"--champion_dir={champion_dir}", f"--model_dir={tmp_path / 'first'}")
    version = pointer(champion_dir)["version"]
    h5 = champion_dir / version / "keras_model.h5"
    config = keras_files.read_model_config(str(h5))
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["optional"] = False
    with h5py.File(h5, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
    weak = task("tf215", tmp_path, "--train_steps=1", "--learning_rate=1e-5", "--save_checkpoints_steps=1",
                f"--champion_dir={champion_dir}", f"--model_dir={tmp_path / 'weak'}")
    record = promotion_record(tmp_path / "weak")
    assert record["compared_by"] == "name" and record["promoted"] is False and "champion_unloadable" not in record
    assert record["champion"] == pytest.approx(promotion_record(tmp_path / "first")["challenger"], abs=1e-6)
    assert "cannot be loaded" not in weak.stderr
    assert pointer(champion_dir)["version"] == version


def _foreign_h5(path, keras_version="9.1.0"):
    """A sound .h5 of a Keras this one cannot deserialize: a layer class it does not have, and another version."""
    tiny_model(path, PERFECT)
    config = keras_files.read_model_config(str(path))
    config["config"]["layers"][-1]["class_name"] = "DenseFromTheFuture"
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = keras_version
    return str(path)


def test_a_sound_champion_of_another_keras_is_never_replaced_without_a_comparison(tmp_path):
    champion_dir = str(tmp_path / "champion")
    store = make_champion(tmp_path, champion_dir, _foreign_h5(tmp_path / "foreign.h5"), ["a", "b"])
    before = (tmp_path / "champion" / champion.POINTER).read_bytes()
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["promoted"] is False and record["compared_by"] == "none"
    assert record["champion_keras_version"] == "9.1.0" and record["champion_unloadable"].startswith(
        ("TypeError", "ValueError")), record
    here = promotion.runtime_versions()
    assert record["reason"].startswith(
        f"the champion version v1 was written by Keras 9.1.0 and cannot be loaded here, Keras {here['keras_version']} "
        f"(TensorFlow {tf.__version__}) ("), record["reason"]
    assert record["reason"].endswith(f"); run this retraining on that runtime, or roll back with `python -m "
                                     f"trainer.champion rollback --champion_dir={champion_dir}`")
    assert "\n" not in record["reason"]
    assert (tmp_path / "champion" / champion.POINTER).read_bytes() == before and store.versions() == ["v1"]
    # The TensorFlow version, when its metrics.json records it, is named too.
    metrics = tmp_path / "champion" / "v1" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "tf_version": "9.1.0"}))
    (tmp_path / "again").mkdir()
    record = promote_with(tmp_path / "again", champion_dir, ["a", "b"])
    assert "was written by Keras 9.1.0 (TensorFlow 9.1.0) and cannot be loaded here" in record["reason"]
    assert record["promoted"] is False and record["champion_tf_version"] == "9.1.0"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "weights_gone"])
def test_a_broken_champion_still_follows_the_existing_rule(tmp_path, damage):
    """Truncated, garbage or missing (even when written by another Keras), or a config this Keras reads with its
    weights gone: replaced, with the reason (README "State that heals")."""
    champion_dir = str(tmp_path / "champion")
    h5 = tmp_path / "good.h5"
    tiny_model(h5, PERFECT)
    with h5py.File(h5, "r+") as f:
        f.attrs["keras_version"] = "2.21.0" if ON_TF215 else "2.15.0"  # The other runtime's file.
    store = make_champion(tmp_path, champion_dir, h5, ["a", "b"])
    path = Path(store.keras_model("v1"))
    if damage == "garbage":
        path.write_bytes(b"this is no HDF5 file" * 50)
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "missing":
        path.unlink()
    else:
        with h5py.File(path, "r+") as f:
            del f["model_weights"]
    record = promote_with(tmp_path, champion_dir, ["a", "b"])
    assert record["promoted"] is True and record["compared_by"] == "none", record
    assert record["reason"].startswith("the champion version v1 cannot be loaded (") and \
        record["reason"].endswith("; replaced without a comparison"), record["reason"]
    assert "champion_keras_version" not in record
    assert store.read_pointer()[0]["version"] == record["version"] != "v1"


# --- Task B: a class added by a retraining ------------------------------------------------------------------------

def test_scores_by_name_count_a_class_the_champion_does_not_know_as_wrong_for_it():
    """Run classes a,b,d; the champion knows a,b,c. On a and b both are right (a tie on the classes both know, where
    the old rule stopped); d's examples decide: the champion has no output for d (probability 0), the challenger
    predicts it. The champion's c output is left out and the rest renormalised."""
    run = ["a", "b", "d"]
    ids = np.array([0, 0, 1, 1, 2, 2])
    champion_p = np.array([[.7, .1, .2], [.6, .2, .2], [.1, .6, .3], [.2, .7, .1],  # a, b: right.
                           [.3, .1, .6], [.1, .2, .7]])  # d: it says c (left out) -> a, b after renormalising.
    challenger_p = np.array([[.8, .1, .1], [.7, .2, .1], [.1, .8, .1], [.1, .8, .1], [.1, .1, .8], [.2, .1, .7]])
    shared = promotion.scores_by_name(champion_p, ids, ["a", "b", "c"], run, ["a", "b"])
    mine_shared = promotion.scores_by_name(challenger_p, ids, run, run, ["a", "b"])
    assert shared["accuracy"] == mine_shared["accuracy"] == 1.0  # The old rule: a tie, never promoted.
    theirs = promotion.scores_by_name(champion_p, ids, ["a", "b", "c"], run, run)
    mine = promotion.scores_by_name(challenger_p, ids, run, run, run)
    assert theirs["accuracy"] == pytest.approx(4 / 6) and mine["accuracy"] == 1.0
    assert theirs["macro_f1"] < mine["macro_f1"] == 1.0
    assert theirs["loss"] == pytest.approx(np.mean([-np.log(.7 / .8), -np.log(.6 / .8), -np.log(.6 / .7),
                                                    -np.log(.7 / .9), -np.log(1e-12), -np.log(1e-12)]))
    assert mine["loss"] < theirs["loss"]
    assert champion.decide("accuracy", mine["accuracy"], theirs["accuracy"], 0.0)[0] is True
    assert champion.decide("loss", mine["loss"], theirs["loss"], 0.0)[0] is True
    # All its mass on the left-out class (float32 underflow): even odds over the ones it knows, never the new one.
    edge = promotion.scores_by_name(np.array([[0.0, 0.0, 1.0]]), np.array([2]), ["a", "b", "c"], run, run)
    assert edge["accuracy"] == 0.0


def _three_class_model(path, kernel):
    """A softmax Dense model on 4 features with a hand-set kernel [4, 3] (bias 0)."""
    inputs = tf.keras.Input((4,))
    dense = tf.keras.layers.Dense(3, activation="softmax")
    model = tf.keras.Model(inputs, dense(inputs))
    dense.set_weights([np.asarray(kernel, np.float32), np.zeros(3, np.float32)])
    model.save(path)
    return str(path)


def three_class_input_fn():
    """Label = which of features 0, 1, 2 is largest (this run's classes a, b, d)."""
    x = np.random.default_rng(1).normal(size=(90, 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, x[:, :3].argmax(-1).astype(np.int32))).batch(16)


def test_a_challenger_that_predicts_a_new_class_wins_a_tie_on_the_shared_ones(tmp_path):
    champion_dir = str(tmp_path / "champion")
    # The champion (a, b, c) reads a from feature 0, b from feature 1, and says c where feature 2 is largest.
    h5 = _three_class_model(tmp_path / "champion.h5", np.eye(4, 3) * 10)
    make_champion(tmp_path, champion_dir, h5, ["a", "b", "c"])
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "export" / "saved_model.pb").write_text("model")
    _three_class_model(run / "keras_model.h5", np.eye(4, 3) * 10)  # a, b, d: right everywhere.
    config = Config(data="digits", champion_dir=champion_dir, model_dir=str(run))
    record = promotion.run(config, str(run), str(run / "export"), three_class_input_fn, ["a", "b", "d"])
    assert record["promoted"] is True, record
    assert record["compared_on_classes"] == ["a", "b", "d"] and record["champion_unknown_classes"] == ["d"]
    assert record["champion_classes"] == ["a", "b", "c"] and record["compared_by"] == "name"
    assert record["challenger"] == 1.0 and record["champion"] < 0.7
    assert record["reason"].endswith("compared on this run's 3 classes (the champion does not know d: its examples "
                                     "count as wrong for it; its outputs of c, which this run lacks, left out)")
    # The same champion against a challenger that never predicts d: a tie, not promoted.
    (run / "keras_model.h5").unlink()
    _three_class_model(run / "keras_model.h5", np.eye(4, 3)[:, [0, 1, 0]] * [10, 10, 0.1])
    record = promotion.run(config, str(run), str(run / "export"), three_class_input_fn, ["a", "b", "d"])
    assert record["promoted"] is False, record


def test_a_class_added_by_a_retraining_is_promoted_when_the_challenger_predicts_it(tmp_path):
    """Trial #6, end to end: champion on digits 1,2,3; a challenger on 1,2,4 warm-started from it."""
    task("tf215" if ON_TF215 else "tf221", tmp_path, "--classes=1,2,3", "--train_steps=40", "--learning_rate=0.01",
         "--save_checkpoints_steps=40", "--champion_dir=champion", "--model_dir=runs/first")
    result = task("tf215" if ON_TF215 else "tf221", tmp_path, "--classes=1,2,4", "--train_steps=40",
                  "--learning_rate=0.01", "--save_checkpoints_steps=40", "--warm_start_from=champion",
                  "--champion_dir=champion", "--model_dir=runs/added")
    record = promotion_record(tmp_path / "runs/added")
    per_class = json.loads((tmp_path / "runs/added/eval_metrics.json").read_text())["per_class"]
    assert record["compared_on_classes"] == ["1", "2", "4"] and record["champion_unknown_classes"] == ["4"]
    line = promotion_line(result)
    assert line.endswith("compared on this run's 3 classes (the champion does not know 4: its examples count as "
                         "wrong for it; its outputs of 3, which this run lacks, left out))"), line
    if per_class["4"]["recall"] > 0:  # It predicts the new class at all.
        assert record["promoted"] is True and line.startswith("promotion: promoted (challenger accuracy"), line
    print(line, per_class["4"])


def test_the_start_of_a_run_says_a_foreign_champion_is_kept(tmp_path, caplog):
    """The check before training agrees with promotion: a sound champion of another Keras is kept (a warning), and
    `--warm_start_from=champion` from it is one error line naming its runtime."""
    from trainer.config import Config
    from trainer.errors import UsageError
    from trainer.stages import preflight

    champion_dir = str(tmp_path / "champion")
    make_champion(tmp_path, champion_dir, _foreign_h5(tmp_path / "foreign.h5"), ["a", "b"])
    preflight.check_champion(Config(data="digits", champion_dir=champion_dir))
    assert "was written by Keras 9.1.0 and cannot be loaded here: this run will not replace it" in caplog.text
    with pytest.raises(UsageError, match="--warm_start_from=champion: the champion version v1 was written by Keras "
                                         "9.1.0 and cannot be loaded by this runtime"):
        preflight.check_champion(Config(data="digits", champion_dir=champion_dir, warm_start_from="champion"))
