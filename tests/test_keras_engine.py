"""The Keras engine (--engine=keras): the Estimator engine's contract through Model.fit, on TensorFlow 2.15 (beside
the Estimator, for parity) and on TensorFlow 2.21 + tf-keras (`make test` runs this file in both venvs).

Real runs on tiny real data: digits and a small image folder, in this process where one TensorFlow runtime
suffices, in subprocesses for CPU replicas (logical devices are fixed when TensorFlow starts), kills and the
other venv."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO, make_image_folder
from trainer.config import Config, resolve_engine
from trainer.errors import UsageError
from trainer.model import ema
from trainer.stages import experiment

# Runs on TensorFlow 2.21 (the Keras engine's runtime); on TF 2.15 with `make test-slow` only.
pytestmark = [pytest.mark.tf221, pytest.mark.keras_engine]

HAS_ESTIMATOR = resolve_engine(None) == "estimator"
needs_estimator = pytest.mark.skipif(not HAS_ESTIMATOR, reason="tf.estimator needs TensorFlow 2.15")
FAST = dict(save_checkpoints_steps=20, eval_throttle_secs=0, batch_size=32, keep_checkpoint_max=100)
SCALARS = {"accuracy", "loss", "macro_f1", "top_k_accuracy"}


def read(path):
    return json.loads(Path(path).read_text())


def signature(export_dir):
    fn = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    inputs = {k: (v.dtype.name, v.shape.as_list()) for k, v in fn.structured_input_signature[1].items()}
    outputs = {k: (v.dtype.name, v.shape.as_list()) for k, v in fn.structured_outputs.items()}
    return inputs, outputs


def eval_tags(model_dir):
    from trainer.util import events

    return set(events.evaluations(str(model_dir)))


def train(engine, model_dir, **flags):
    values = dict(data="digits", backbone="small_cnn", train_steps=60, **FAST)
    values.update(flags)
    return experiment.train_and_evaluate(Config(engine=engine, model_dir=str(model_dir), **values))


def test_the_default_engine_follows_the_tensorflow():
    major, minor = (int(p) for p in tf.__version__.split(".")[:2])
    assert resolve_engine(None) == ("estimator" if (major, minor) <= (2, 15) else "keras")
    with pytest.raises(UsageError, match="--engine=turbo is not valid; choose one of: estimator, keras"):
        resolve_engine("turbo")


@pytest.mark.skipif(HAS_ESTIMATOR, reason="this TensorFlow has tf.estimator")
def test_engine_estimator_on_a_tensorflow_without_it_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--engine=estimator",
                             f"--model_dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "removed in TensorFlow 2.16" in errors[0] and "--engine=keras" in errors[0]
    assert not (tmp_path / "run" / "run_info.json").exists()


def test_a_keras_run_writes_the_output_contract(tmp_path):
    """Files, run_info's engine fields, the eval scalars, the image-bytes export served by trainer.predict and
    converted by --export_tflite, on an image folder."""
    images = make_image_folder(tmp_path / "images", classes=("cats", "dogs", "owls"), per_class=10)
    run = tmp_path / "run"
    summary = train("keras", run, data=str(images), backbone="small_cnn", image_size=16, train_steps=40,
                    export_tflite="float32", batch_size=8, save_checkpoints_steps=10)
    assert summary["global_step"] == 40 and summary["accuracy"] > 0.6
    info = read(run / "run_info.json")
    assert info["engine"] == "keras" and info["estimator"] == "Keras Model.fit"
    assert info["tf_version"] == tf.__version__ and info["keras_version"].startswith("2.")
    for name in ("eval_metrics.json", "model_summary.json", "keras_model.h5", "report.html",  # train.log: CLI runs.
                 "export/tflite/model.tflite"):
        assert (run / name).exists(), name
    metrics = read(run / "eval_metrics.json")
    assert metrics["served_model"] == "best" and set(metrics["per_class"]) == {"cats", "dogs", "owls"}
    assert {"accuracy", "loss", "macro_f1"} <= eval_tags(run)
    from trainer.util import events

    assert {"loss", "learning_rate"} <= set(events.read_scalars(str(run)))
    inputs, outputs = signature(summary["export"])
    assert inputs == {"image_bytes": ("string", [None])}
    assert outputs == {"probabilities": ("float32", [None, 3]), "classes": ("string", [None])}
    out = tmp_path / "predictions.csv"
    result = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={run}", f"--data={images}",
                             f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = out.read_text().splitlines()
    assert len(rows) == 31 and sum(r.split(",")[1] in r.split(",")[0] for r in rows[1:]) >= 20  # Path has the class.
    assert read(run / "run_info.json")["tflite"]["agreement_with_keras_model"]["top1"] >= 0.9
    for tool, extra in (("trainer.report", [f"--output={tmp_path / 'again.html'}"]),
                        ("trainer.export_tflite", ["--quantize=float16"])):
        result = subprocess.run([sys.executable, "-m", tool, str(run), *extra], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (tool, result.stderr[-2000:])
    assert "accuracy" in (tmp_path / "again.html").read_text()


@needs_estimator
def test_both_engines_reach_the_same_accuracy_with_the_same_signature(tmp_path):
    """Parity on the digits transfer task: a frozen 'pretrained' base model, then fine-tuning (two phases)."""
    base = restart_cases._base_model(tmp_path)
    flags = dict(base_model=base, classes=tuple("012345"), freeze="all", train_steps=40, fine_tune_steps=20,
                 fine_tune_freeze="none", lr_schedule="cosine", warmup_steps=5, batch_size=16,
                 save_checkpoints_steps=10)
    estimator = train("estimator", tmp_path / "estimator", **flags)
    keras = train("keras", tmp_path / "keras", **flags)
    assert estimator["global_step"] == keras["global_step"] == 60
    assert abs(estimator["accuracy"] - keras["accuracy"]) <= 0.02, (estimator, keras)
    assert signature(estimator["export"]) == signature(keras["export"])
    assert eval_tags(tmp_path / "keras") == eval_tags(tmp_path / "estimator")
    phases = [read(tmp_path / e / "run_info.json")["phases"] for e in ("estimator", "keras")]
    assert [(p["name"], p["first_step"], p["last_step"], p["trainable_params"]) for p in phases[0]] == \
        [(p["name"], p["first_step"], p["last_step"], p["trainable_params"]) for p in phases[1]]
    assert set(read(tmp_path / "keras" / "eval_metrics.json")) == set(read(tmp_path / "estimator" / "eval_metrics.json"))


@needs_estimator
def test_a_champion_of_one_engine_is_challenged_by_the_other_on_the_same_numbers(tmp_path):
    champion = tmp_path / "champion"
    first = train("estimator", tmp_path / "a", champion_dir=str(champion), train_steps=40)
    second = train("keras", tmp_path / "b", champion_dir=str(champion), train_steps=20, learning_rate=1e-4)
    third = train("estimator", tmp_path / "c", champion_dir=str(champion), train_steps=60)
    records = [read(tmp_path / r / "run_info.json")["promotion"] for r in ("a", "b", "c")]
    assert records[0]["promoted"] is True
    # The keras run scores the estimator's champion exactly as that run scored itself (same data, same model).
    assert records[1]["champion"] == pytest.approx(records[0]["challenger"], abs=1e-6)
    assert records[1]["promoted"] is False and records[1]["challenger"] < records[1]["champion"]
    assert records[2]["champion"] == pytest.approx(records[0]["challenger"], abs=1e-6)
    assert first["accuracy"] and second["accuracy"] and third["accuracy"]


def test_a_parameter_server_cluster_is_refused_in_one_line_before_any_work(tmp_path):
    tf_config = {"cluster": {"chief": ["127.0.0.1:45611"], "worker": ["127.0.0.1:45612"], "ps": ["127.0.0.1:45613"]},
                 "task": {"type": "chief", "index": 0}}
    result = subprocess.run([sys.executable, "-m", "trainer.task", "--engine=keras", "--data=digits",
                             "--backbone=mlp", f"--model_dir={tmp_path / 'run'}"], cwd=REPO,
                            env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)), capture_output=True, text=True,
                            timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors[0].startswith("error: --strategy=parameter_server is not supported by --engine=keras")
    assert not (tmp_path / "run" / "run_info.json").exists()


def test_a_resume_with_the_other_engine_is_refused(tmp_path):
    train("keras", tmp_path / "run", train_steps=20)
    other = "estimator" if HAS_ESTIMATOR else "keras"
    if other == "keras":
        pytest.skip("one engine on this TensorFlow")
    with pytest.raises(UsageError, match="--engine=estimator differs from the --engine=keras"):
        train(other, tmp_path / "run", train_steps=40)


@pytest.mark.skipif(HAS_ESTIMATOR, reason="this TensorFlow has tf.estimator")
def test_an_estimator_run_resumed_on_tf221_says_to_use_tf215(tmp_path):
    """New-user trial c034: the error said `keep --engine=estimator`, which TF 2.21 cannot do."""
    train("keras", tmp_path / "run", train_steps=20)
    info = read(tmp_path / "run" / "run_info.json")
    info["flags"]["engine"], info["engine"] = "estimator", "estimator"  # As an Estimator run's folder records it.
    (tmp_path / "run" / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(UsageError, match="differs from the --engine=estimator .*resume it on TensorFlow 2.15 .*"
                                         "--warm_start_from"):
        train("keras", tmp_path / "run", train_steps=40)


def _subprocess_run(args, model_dir, env=None):
    return subprocess.run([sys.executable, "-m", "trainer.task", *args, f"--model_dir={model_dir}"], cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})), capture_output=True,
                          text=True, timeout=600)


def test_two_cpu_replicas_reach_the_accuracy_of_one_device(tmp_path):
    """The check that would have caught keras#19891 (MirroredStrategy gradients aggregated wrongly)."""
    args = ["--engine=keras", "--data=digits", "--backbone=small_cnn", "--train_steps=80", "--batch_size=32",
            "--save_checkpoints_steps=40", "--eval_throttle_secs=0"]
    one = _subprocess_run(args, tmp_path / "one")
    two = _subprocess_run(args + ["--strategy=mirrored", "--num_cpu_replicas=2"], tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    one, two = json.loads(one.stdout.splitlines()[-1]), json.loads(two.stdout.splitlines()[-1])
    info = read(tmp_path / "two" / "run_info.json")
    assert info["num_replicas"] == 2 and info["per_replica_batch_size"] == 16
    assert two["global_step"] == 80 and abs(one["accuracy"] - two["accuracy"]) <= 0.02, (one, two)


TWO_PHASES = ["--engine=keras", "--data=digits", "--classes=0,1,2,3,4,5", "--backbone=small_cnn",
              "--save_checkpoints_steps=10", "--eval_throttle_secs=0", "--keep_checkpoint_max=1000", "--batch_size=16"]


@pytest.mark.parametrize("how,step", [pytest.param("kill", 20, marks=pytest.mark.slow), ("term", 50)])
def test_killed_in_either_phase_a_keras_run_resumes_and_ends_as_uninterrupted(tmp_path, how, step):
    """SIGKILL in phase 1 or SIGTERM in phase 2, then the same command: the restart-equivalence property
    (tests/restart_cases.py: same phases, same schedule, same trained weights per phase, same end)."""
    args = TWO_PHASES + ["--freeze=all", "--fine_tune_freeze=none", "--train_steps=30", "--fine_tune_steps=30",
                         "--lr_schedule=cosine", "--warmup_steps=4"]
    case = {"args": args, "interruptions": [{"how": how, "step": step}], "early_stopping": False}
    assert restart_cases.check_case(case, tmp_path) == []
    run = tmp_path / "interrupted"
    stderr = (tmp_path / "interrupted-0.stderr").read_text()
    if how == "term":
        assert "preempted: checkpoint saved at step" in stderr
    late, end = (tf.train.load_checkpoint(str(run / f"model.ckpt-{s}")) for s in (40, 60))
    assert not np.array_equal(late.get_tensor("conv1/kernel"), end.get_tensor("conv1/kernel"))  # Phase 2 trains it.


def test_sigterm_saves_and_exits_143(tmp_path):
    code, stderr, what = restart_cases.interrupted_run(TWO_PHASES + ["--train_steps=400"], tmp_path / "run",
                                                       {"how": "term", "step": 10})
    assert what == "signal sent" and code == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    saved = restart_cases._latest_step(tmp_path / "run")
    assert 10 <= saved < 400


def test_a_mixed_precision_run_killed_resumes_with_its_loss_scale(tmp_path):
    """Wrappers trial B7 (silent): the checkpoint lacked the dynamic loss scale, so a resumed --mixed_precision run
    started again at 32768 and drifted from the uninterrupted one. That a killed run ends on the uninterrupted run's
    weights is tests/test_keras_precision.py's case; here, that the scale resumed is the checkpoint's."""
    args = ["--engine=keras", "--data=digits", "--classes=0,1,2", "--backbone=small_cnn", "--mixed_precision",
            "--train_steps=60", "--save_checkpoints_steps=20", "--eval_throttle_secs=0", "--batch_size=16"]
    code, stderr, what = restart_cases.interrupted_run(args, tmp_path / "cut", {"how": "kill", "step": 20})
    assert what == "signal sent", stderr[-2000:]
    saved = tf.train.load_checkpoint(str(tmp_path / "cut" / "model.ckpt-20"))
    assert "training/loss_scale/current_loss_scale" in saved.get_variable_to_shape_map()
    # On this CPU the scale never leaves 32768 in 60 steps (no overflow), so the weights alone cannot tell a restored
    # scale from a fresh one: give the checkpoint a scale of 1024 after 7 good steps, and resume from it.
    from trainer.engines.keras import saving

    run = tmp_path / "cut"
    for path in run.glob("model.ckpt-[46]0.*"):
        path.unlink()
    (run / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-20"\n')
    (run / "eval").mkdir(exist_ok=True)  # Killed at step 20, maybe before its evaluation.
    (run / "eval" / "processed.json").write_text('{"step": 20}')
    reader = tf.train.load_checkpoint(str(run / "model.ckpt-20"))
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    tensors.update({"training/loss_scale/current_loss_scale": np.float32(1024.0),
                    "training/loss_scale/good_steps": np.int64(7)})
    saving.write_bundle(str(run / "model.ckpt-20"), tensors)
    again = restart_cases.run_to_end(args, run)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = tf.train.load_checkpoint(str(run / "model.ckpt-40"))
    assert float(resumed.get_tensor("training/loss_scale/current_loss_scale")) == 1024.0
    assert int(resumed.get_tensor("training/loss_scale/good_steps")) == 27


@pytest.mark.slow  # Drawn restart cases: make test-slow (scripts/restart_fuzz.py --engine=keras draws more).
@pytest.mark.parametrize("seed", (3, 7))
def test_a_drawn_keras_recipe_interrupted_ends_as_uninterrupted(tmp_path, seed):
    assert restart_cases.run_case(seed, tmp_path, engine="keras") == []


@pytest.mark.skipif(HAS_ESTIMATOR or not os.environ.get("TRAINER_TF215_PYTHON"),
                    reason="TensorFlow 2.21 leg, with the TensorFlow 2.15 venv beside it (make test)")
def test_a_model_exported_on_tf221_serves_on_tf215(tmp_path):
    """What Vertex AI's prebuilt TF 2.15 prediction images (until 2027-01-14) would do with the Keras engine's
    exports: load the SavedModel and call serving_default, here through trainer.predict in the 2.15 venv."""
    images = make_image_folder(tmp_path / "images", classes=("cats", "dogs"), per_class=8)
    summary = train("keras", tmp_path / "run", data=str(images), image_size=16, train_steps=30, batch_size=8,
                    save_checkpoints_steps=10)
    out = tmp_path / "p.jsonl"
    result = subprocess.run([os.environ["TRAINER_TF215_PYTHON"], "-m", "trainer.predict",
                             f"--model={summary['export']}", f"--data={images}", f"--output={out}"], cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and all(r["predicted"] in ("cats", "dogs") for r in rows)


@needs_estimator
def test_a_run_moves_to_the_other_engine_by_warm_start(tmp_path):
    """The README's way from one engine to the other: a new --model_dir warm-started from the old run."""
    old = train("estimator", tmp_path / "old", train_steps=60)
    moved = train("keras", tmp_path / "new", warm_start_from=str(tmp_path / "old"), train_steps=1,
                  learning_rate=1e-9, save_checkpoints_steps=1)
    assert moved["accuracy"] == pytest.approx(old["accuracy"], abs=0.005)
    assert read(tmp_path / "new" / "run_info.json")["warm_start_from"] == str(tmp_path / "old")


@pytest.mark.skipif(HAS_ESTIMATOR or not os.environ.get("TRAINER_TF215_PYTHON"),
                    reason="TensorFlow 2.21 leg, with the TensorFlow 2.15 venv beside it (make test)")
def test_an_estimator_run_on_tf215_continues_on_tf221(tmp_path):
    """The migration: a model trained by the Estimator engine on TensorFlow 2.15 warm-starts a Keras-engine run
    on TensorFlow 2.21 with its weights intact."""
    old = tmp_path / "old"
    result = subprocess.run([os.environ["TRAINER_TF215_PYTHON"], "-m", "trainer.task", "--data=digits",
                             "--backbone=small_cnn", "--engine=estimator", "--train_steps=60", "--batch_size=32",
                             "--save_checkpoints_steps=60", f"--model_dir={old}"], cwd=REPO,
                            env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before = json.loads(result.stdout.splitlines()[-1])
    moved = train("keras", tmp_path / "new", warm_start_from=str(old), train_steps=1, learning_rate=1e-9,
                  save_checkpoints_steps=1)
    assert moved["accuracy"] == pytest.approx(before["accuracy"], abs=0.005)


def test_a_keras_cluster_trains_through_launch_local(tmp_path):
    """Chief + worker under MultiWorkerMirroredStrategy (Model.fit) and an evaluator task, as Vertex AI runs
    them, through trainer.launch_local; two phases, so the tasks also cross a boundary together."""
    model_dir = tmp_path / "mw"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--evaluator", "--timeout=400", "--",
         "--engine=keras", "--data=digits", "--backbone=small_cnn", f"--model_dir={model_dir}", "--train_steps=40",
         "--fine_tune_steps=20", "--save_checkpoints_steps=20", "--eval_throttle_secs=0",
         "--batch_size=32"], cwd=REPO, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 60 and summary["accuracy"] > 0.5
    info = read(model_dir / "run_info.json")
    assert info["engine"] == "keras" and info["strategy"] == "multi_worker" and info["num_replicas"] == 2
    assert [p["name"] for p in info["phases"]] == ["train", "fine_tune"]
    assert "[evaluator]" in proc.stderr and "[worker0]" in proc.stderr
    from trainer.util import events

    evaluated = [s for s, _ in events.evaluations(str(model_dir)).get("accuracy", [])]
    assert evaluated and max(evaluated) <= 60, evaluated  # The evaluator evaluated the chief's checkpoints.
    assert (model_dir / "keras_model.h5").exists() and summary["export"]
    assert signature(summary["export"])[1]["probabilities"] == ("float32", [None, 10])


def _tfrecords(tmp_path):
    from trainer.data import conversion

    images = make_image_folder(tmp_path / "images", classes=("cats", "dogs"), per_class=12)
    conversion.convert(str(images), str(tmp_path / "records"), shards=2, validation_split=0.0)
    return str(tmp_path / "records" / "train-*")


def _npz(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.repeat(digits.images[..., None] / 16.0, 3, axis=-1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:1400], y_train=digits.target[:1400], x_test=x[1400:],
             y_test=digits.target[1400:])
    return str(tmp_path / "d.npz")


# Each flag of a run under the Keras engine, end to end: (flags, a check of what it must change).
FLAG_CASES = {
    "mixed_precision_jit": (dict(mixed_precision=True, jit=True, ema_decay=0.9, augment=(("mixup", 0.2),)),
                            lambda run, s, m: signature(s["export"])[1]["probabilities"][0] == "float32"),
    "export_latest": (dict(export="latest", keep_checkpoint_max=2, train_steps=60),
                      lambda run, s, m: len(list((run / "export" / "latest").glob("1*"))) == 2),
    "export_final": (dict(export="final"),
                     lambda run, s, m: len(list((run / "export" / "final").glob("1*"))) == 1),
    "recipe": (dict(label_smoothing=0.1, class_weight="balanced", weight_decay=1e-4, clip_norm=1.0, top_k=3,
                    optimizer="rmsprop", lr_schedule="exponential", lr_decay_steps=10, lr_decay_rate=0.5,
                    augment=(("trivialaugment", 0.0), ("mixup", 0.2), ("cutmix", 1.0))),
               lambda run, s, m: "top_k_accuracy" in m and "per_class" in m and
               read(run / "run_info.json")["phases"][0]["augment"][2] == ["cutmix", 1.0]),
    "early_stopping": (dict(early_stopping_patience=1, early_stopping_min_delta=0.9, train_steps=100,
                            save_checkpoints_steps=10),
                       lambda run, s, m: read(run / "run_info.json")["early_stopped_at_step"] == 20 and
                       s["global_step"] < 100),
    "binary_augment": (dict(classes=("0", "1"), label_mode="binary",  # Mixup on binary labels: soft shares of 1.
                            augment=(("flip", 0.0), ("zoom", 0.1), ("mixup", 0.4))),
                       lambda run, s, m: "auc" in m and signature(s["export"])[1]["probabilities"][1] == [None, 2]),
    "tfrecords": (dict(data=_tfrecords, validation_split=0.25, image_size=16, batch_size=6),
                  lambda run, s, m: signature(s["export"])[0] == {"image_bytes": ("string", [None])}),
    "tpu_path_off": (dict(strategy="tpu", use_tpu=False, fine_tune_steps=20),  # No TPU here: the path without it.
                     lambda run, s, m: read(run / "run_info.json")["strategy"] == "tpu" and s["global_step"] == 60),
    "npz_categorical": (dict(data=_npz, label_mode="categorical", train_steps=60, augment=(("mixup", 0.2),)),
                        lambda run, s, m: s["accuracy"] > 0.5),  # Soft one-hot targets under Mixup.
}


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_each_flag_runs_end_to_end_on_the_keras_engine(tmp_path, name):
    flags, check = FLAG_CASES[name]
    flags = {k: (v(tmp_path) if callable(v) else v) for k, v in flags.items()}
    flags.setdefault("train_steps", 40)
    run = tmp_path / "run"
    summary = train("keras", run, **flags)
    metrics = read(run / "eval_metrics.json")
    assert summary["export"] and (run / "keras_model.h5").exists()
    assert check(run, summary, metrics), (name, summary, metrics)


def test_vertex_dirs_hypertune_tensorboard_and_checkpoint_sync(tmp_path, monkeypatch, gcs_server):
    _, client = gcs_server
    monkeypatch.setenv("AIP_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", str(tmp_path / "tb"))
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(tmp_path / "hp" / "output.metrics"))
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_TAG", "accuracy")
    summary = experiment.train_and_evaluate(Config(
        engine="keras", data="digits", backbone="mlp", train_steps=40, sync_checkpoints_to="gs://test-bucket/mirror",
        **FAST))
    assert summary["model_dir"] == str(tmp_path / "model")
    assert (tmp_path / "checkpoints" / "model.ckpt-40.index").exists()
    assert not list((tmp_path / "model").glob("model.ckpt-*"))
    # The served export (calibrated: --calibrate=temperature) is copied into $AIP_MODEL_DIR, where Vertex imports it.
    assert summary["export"].startswith(str(tmp_path / "model" / "export" / "calibrated"))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and list((tmp_path / "tb").glob("eval/events*"))
    lines = [json.loads(line) for line in (tmp_path / "hp" / "output.metrics").read_text().splitlines()]
    assert [int(line["global_step"]) for line in lines] == [20, 40]
    mirrored = client.bucket("test-bucket").blob("mirror/model.ckpt-40.index").download_as_bytes()
    assert mirrored == (tmp_path / "checkpoints" / "model.ckpt-40.index").read_bytes()


@pytest.mark.slow  # Multi-process kill: make test-slow (the cluster itself trains in make test, above).
def test_a_keras_cluster_preempted_by_sigterm_resumes(tmp_path):
    """Vertex AI sends SIGTERM to every task: chief and worker agree on the step (one all-reduce), the chief saves
    there, the tasks exit 143; the same command then resumes from that step and finishes."""
    import re
    import signal
    import time

    model_dir = tmp_path / "mw"
    command = [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--timeout=300", "--", "--engine=keras",
               "--data=digits", "--backbone=small_cnn", f"--model_dir={model_dir}", "--train_steps=300",
               "--save_checkpoints_steps=20", "--eval_throttle_secs=0", "--batch_size=32"]
    log = tmp_path / "first.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.time() + 240
        while restart_cases._latest_step(model_dir) < 40 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", log.read_text())]
        assert len(pids) == 2, log.read_text()[-2000:]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == 143, text[-3000:]
    saved = restart_cases._latest_step(model_dir)
    assert 40 <= saved < 300 and "preempted: checkpoint saved at step" in text, text[-3000:]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 300
    assert f"[chief] model_dir: {model_dir} (300 steps, resuming from step {saved})" in again.stderr, again.stderr[-2000:]


def test_a_nan_loss_stops_with_one_error_line_and_exports_nothing(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "trainer.task", "--engine=keras", "--data=digits", "--backbone=mlp",
                             "--optimizer=sgd", "--learning_rate=1e30", "--train_steps=50", "--eval_throttle_secs=0",
                             f"--model_dir={run}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "NaN or infinite at step" in line
    assert not (run / "keras_model.h5").exists() and not (run / "eval_metrics.json").exists()
    assert not (run / "export").exists()


MIXED = ["--augment=randaugment:2:9,mixup:0.4,cutmix", "--ema_decay=0.9"]


# Both in make test-slow (make test's 20 minutes; tests/test_keras_precision.py resumes mixed precision there).
@pytest.mark.parametrize("replicas", [pytest.param(MIXED, marks=pytest.mark.slow),
                                      pytest.param(["--strategy=mirrored", "--num_cpu_replicas=2"],
                                                   marks=pytest.mark.slow)], ids=["one_device_mixed", "mirrored"])
def test_a_keras_restart_trains_on_the_batches_the_uninterrupted_run_did(tmp_path, replicas):
    """After a SIGKILL the Keras engine restores the weights and the optimizer's slots of the last checkpoint and
    the data stream goes on where it was: on one device and on 2 CPU replicas, the interrupted run's weights are
    the uninterrupted run's at every later checkpoint. On one device with RandAugment, Mixup and CutMix (their
    draws are replayed too, seeded per batch) and a moving average of the weights (checkpointed: the same)."""
    args = ["--engine=keras", "--data=digits", "--classes=0,1,2,3,4,5", "--backbone=small_cnn", "--train_steps=26",
            "--fine_tune_steps=12", "--fine_tune_freeze=all", "--optimizer=sgd", "--learning_rate=0.05",
            "--warmup_steps=2", "--save_checkpoints_steps=8", "--eval_throttle_secs=0", "--keep_checkpoint_max=1000",
            "--batch_size=16", "--seed=34", *replicas]
    case = {"args": args, "interruptions": [{"how": "kill", "step": 17}], "early_stopping": False}
    assert restart_cases.check_case(case, tmp_path) == []
    for step in (24, 26, 38):
        plain, cut = (tf.train.load_checkpoint(str(tmp_path / run / f"model.ckpt-{step}"))
                      for run in ("plain", "interrupted"))
        averages = ema.average_names(plain.get_variable_to_shape_map(), ["conv1/kernel", "probabilities/kernel"])
        if replicas == MIXED:  # Phase 2 keeps the trunk frozen: no average of conv1 there.
            assert step == 26 or set(averages) == ({"probabilities/kernel"} | (
            {"conv1/kernel"} if step < 26 else set()))  # 26: the boundary (the engines write it apart).
        for name in ("conv1/kernel", "bn2/moving_mean", "probabilities/kernel", *averages.values()):
            np.testing.assert_allclose(cut.get_tensor(name), plain.get_tensor(name), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} at step {step}")


def test_a_resume_with_changed_recipe_flags_starts_a_recorded_phase(capsys, tmp_path):
    """As under the Estimator engine (tests/test_resume_flags.py): the history is kept, a new phase is recorded
    with a console line, and it trains on its own schedule."""
    from test_bad_inputs import cli
    from test_recipe import scalars

    run = tmp_path / "run"
    # One step per window: the scalars are then logged at each fit's first step, as the Estimator's are (with K
    # steps per window, at the first window's end: tests/test_keras_steps.py).
    common = ["--engine=keras", "--data=digits", "--classes=0,1,2", "--backbone=mlp", "--save_checkpoints_steps=20",
              "--steps_per_execution=1", f"--model_dir={run}"]
    assert cli(capsys, *common, "--train_steps=20") == (0, [])
    first = read(run / "run_info.json")["phases"]
    status, errors, err = cli(capsys, *common, "--train_steps=40", "--lr_schedule=cosine", "--warmup_steps=10",
                              whole_stderr=True)
    assert (status, errors) == (0, []), err[-2000:]
    assert "resuming at step 20 with another recipe" in err and "--lr_schedule=cosine (was constant)" in err
    phases = read(run / "run_info.json")["phases"]
    assert phases[0] == first[0]
    assert [(p["name"], p["first_step"], p["last_step"]) for p in phases] == [
        ("train", 0, 20), ("train (flags changed at step 20)", 20, 40)]
    rates = scalars(run, "learning_rate")
    assert rates[1] == pytest.approx(1e-3)
    assert rates[21] == pytest.approx(1e-4)  # The new phase's first step: warmup 1/10 of the rate.
