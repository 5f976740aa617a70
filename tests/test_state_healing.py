"""State files healed by value, not only by shape (SRE trial 2026-12-04 B2, B3), on each engine this runtime has:
a phase history that is garbled or partial, and a Keras-engine export whose keras_weights/ is gone. Each was a
silent restart of the phase or a traceback on every rerun. (best.json with a non-numeric metric, B1: test_healing.)"""
import json
import shutil

import pytest

import restart_cases
from conftest import PerEngine
from trainer.config import resolve_engine

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

ENGINES = ["keras"] + (["estimator"] if resolve_engine(None) == "estimator" else [])
ARGS = ["--data=digits", "--classes=0,1,2", "--backbone=small_cnn", "--freeze=all", "--fine_tune_freeze=none",
        "--train_steps=20", "--save_checkpoints_steps=10", "--eval_throttle_secs=0", "--keep_checkpoint_max=10",
        "--lr_schedule=cosine", "--batch_size=16"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-phase run of each engine (train 0..20, fine_tune 20..40), copied per test."""
    def make(engine):
        run = tmp_path_factory.mktemp(engine) / "run"
        proc = restart_cases.run_to_end(ARGS + ["--fine_tune_steps=20", f"--engine={engine}"], run)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return run

    return PerEngine(make)


def _resume(run, engine):
    """The same run extended to step 50: it goes on in fine_tune, with its optimizer state and schedule."""
    proc = restart_cases.run_to_end(ARGS + ["--fine_tune_steps=30", f"--engine={engine}"], run)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def intact(finished, tmp_path_factory):
    """The extended run from intact state, per engine: (phases, accuracy)."""
    def make(engine):
        copy = tmp_path_factory.mktemp(f"intact-{engine}") / "run"
        shutil.copytree(finished[engine], copy)
        summary = json.loads(_resume(copy, engine).stdout.strip().splitlines()[-1])
        return _phases(copy), summary["accuracy"]

    return PerEngine(make)


def _phases(run):
    return [(p["name"], p["first_step"], p["last_step"]) for p in json.loads((run / "run_info.json").read_text())[
        "phases"]]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("damage", ["not_a_list", "non_integer_step", "record_dropped", "steps_out_of_order"])
def test_a_garbled_or_partial_phase_history_is_rebuilt_not_a_new_phase(finished, intact, tmp_path, engine, damage):
    run = tmp_path / "run"
    shutil.copytree(finished[engine], run)
    info = json.loads((run / "run_info.json").read_text())
    if damage == "not_a_list":
        info["phases"] = "garbage"
    elif damage == "non_integer_step":
        info["phases"][1]["first_step"] = "abc"
    elif damage == "record_dropped":
        info["phases"] = info["phases"][:1]
    else:
        info["phases"][0]["first_step"], info["phases"][1]["first_step"] = 20, 0
    (run / "run_info.json").write_text(json.dumps(info))
    proc = _resume(run, engine)
    assert "phase history" in proc.stderr, proc.stderr[-2000:]  # Said, with what is assumed instead.
    log = (run / "train.log").read_text().rsplit("===== run started", 1)[-1]
    assert "fresh optimizer state" not in log and "flags changed" not in log
    phases, accuracy = intact[engine]
    assert _phases(run) == phases == [("train", 0, 20), ("fine_tune", 20, 50)]
    if engine == "keras":  # Exact on one device: the same optimizer state and schedule as the intact resume.
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("which", ["best", "all", "incomplete"])
def test_a_keras_export_without_its_keras_weights_is_rebuilt(finished, tmp_path, which):
    """SRE trial B2: keras_model.h5 read the SavedModel's object-keyed variables as Keras names: a traceback after
    the whole training, on every rerun. Now keras_weights/ is made again from the SavedModel's variables."""
    import tensorflow as tf

    run = tmp_path / "run"
    shutil.copytree(finished["keras"], run)
    best_dir = run / "export" / "best"
    best = json.loads((best_dir / "best.json").read_text())["export"]
    for version in (p for p in best_dir.iterdir() if p.name.isdigit() and (which == "all" or p.name == best)):
        if which == "incomplete":  # The folder there, its index gone (a copy cut short).
            (version / "keras_weights" / "weights.index").unlink()
        else:
            shutil.rmtree(version / "keras_weights")
    (run / "keras_model.h5").unlink()  # As if killed before it was written.
    proc = restart_cases.run_to_end(ARGS + ["--fine_tune_steps=20", "--engine=keras"], run)  # Nothing to train.
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "had no keras_weights/: rebuilt it" in proc.stderr, proc.stderr[-2000:]
    served = json.loads((best_dir / "best.json").read_text())["export"]
    assert served == best
    assert (best_dir / served / "keras_weights" / "weights.index").exists()
    # keras_model.h5 is the served export's model (calibrated from the best one): the same predictions as its
    # SavedModel.
    model = tf.keras.models.load_model(run / "keras_model.h5", compile=False)
    export = json.loads(proc.stdout.strip().splitlines()[-1])["export"]
    assert "/export/calibrated/" in export
    serve = tf.saved_model.load(export).signatures["serving_default"]
    x = tf.random.stateless_uniform((4,) + tuple(model.inputs[0].shape[1:]), seed=(1, 2))
    name = list(serve.structured_input_signature[1])[0]
    probabilities = serve(**{name: x})["probabilities"].numpy()
    assert abs(probabilities - model(x).numpy()).max() < 1e-5


def test_a_dry_run_in_a_finished_folder_leaves_its_record_alone(finished, tmp_path):
    """SRE trial W2: `--dry_run` replaced a finished run's run_info.json (phases, export, train_seconds gone)."""
    run = tmp_path / "run"
    shutil.copytree(finished["keras"], run)
    before = (run / "run_info.json").read_bytes()
    proc = restart_cases.run_to_end(ARGS + ["--fine_tune_steps=20", "--engine=keras", "--dry_run"], run)
    assert proc.returncode == 0 and "belongs to a run" in proc.stderr, proc.stderr[-2000:]
    assert (run / "run_info.json").read_bytes() == before
    assert json.loads((run / "dry_run.json").read_text())["dry_run"] is True
