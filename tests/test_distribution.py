"""Strategies: the chooser, TF_CONFIG roles, and real runs (CPU replicas, multi-worker processes, TPU path)."""
import json
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO
from trainer.run import distribution
from trainer.stages import experiment
from trainer.config import Config
from trainer.errors import UsageError

FAST = dict(data="digits", backbone="small_cnn", save_checkpoints_steps=30, eval_throttle_secs=0)


def tf_config(chief=1, workers=0, ps=0, task=("chief", 0)):
    cluster = {"chief": [f"127.0.0.1:{2000 + i}" for i in range(chief)]}
    if workers:
        cluster["worker"] = [f"127.0.0.1:{3000 + i}" for i in range(workers)]
    if ps:
        cluster["ps"] = [f"127.0.0.1:{4000 + i}" for i in range(ps)]
    return {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}


@pytest.mark.parametrize("name, config, gpus, expected", [
    ("auto", {}, 0, "one_device"),
    ("auto", {}, 1, "one_device"),
    ("auto", {}, 4, "mirrored"),
    ("auto", tf_config(workers=1), 0, "multi_worker"),
    ("auto", tf_config(workers=0), 2, "mirrored"),
    ("auto", tf_config(workers=2, ps=1), 0, "parameter_server"),
    ("tpu", {}, 0, "tpu"),
    ("one_device", tf_config(workers=3), 8, "one_device"),
])
def test_strategy_chooser(name, config, gpus, expected):
    assert distribution.choose(name, config, gpus) == expected


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(UsageError, match="--strategy=horovod is unknown; choose one of: auto, one_device"):
        distribution.choose("horovod", {}, 0)


def test_tf_config_parsing():
    legacy = {"cluster": {"master": ["h:1"], "worker": ["h:2"]}, "task": {"type": "master", "index": 0}}
    parsed = distribution.parse_tf_config(json.dumps(legacy))
    assert parsed["cluster"]["chief"] == ["h:1"] and parsed["task"]["type"] == "chief"
    with pytest.raises(UsageError, match="TF_CONFIG is not valid JSON"):
        distribution.parse_tf_config("{cluster:")
    with pytest.raises(UsageError, match="unknown task type 'boss'"):
        distribution.parse_tf_config(json.dumps({"cluster": {"boss": ["h:1"]}, "task": {"type": "boss"}}))
    with pytest.raises(UsageError, match="not in its cluster"):
        distribution.parse_tf_config(json.dumps(tf_config(workers=1, task=("worker", 5))))
    assert distribution.parse_tf_config("") == {}


def test_evaluator_builds_no_strategy():
    plan = distribution.get_plan("auto", tf_config_raw=json.dumps(tf_config(workers=1, task=("evaluator", 0))))
    assert plan.is_evaluator and plan.strategy is None and plan.name == "multi_worker"


def test_multi_worker_without_tf_config_is_an_error():
    with pytest.raises(UsageError, match="needs TF_CONFIG"):
        distribution.get_plan("multi_worker", tf_config_raw="")


def test_global_batch_must_divide_among_replicas(tmp_path):
    with pytest.raises(UsageError, match="--batch_size=33 is not divisible by the 2 replicas"):
        experiment.train_and_evaluate(Config(strategy="mirrored", num_cpu_replicas=2, batch_size=33,
                                             model_dir=str(tmp_path), **FAST))


def test_two_cpu_replicas_train_a_batchnorm_model(tmp_path):
    summary = experiment.train_and_evaluate(Config(strategy="mirrored", num_cpu_replicas=2, batch_size=32,
                                                   train_steps=60, model_dir=str(tmp_path), **FAST))
    assert summary["global_step"] == 60 and summary["accuracy"] > 0.5
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert (info["strategy"], info["num_replicas"], info["per_replica_batch_size"]) == ("mirrored", 2, 16)


def test_tpu_path_trains_on_cpu_with_use_tpu_false(tmp_path):
    summary = experiment.train_and_evaluate(Config(strategy="tpu", use_tpu=False, batch_size=32, train_steps=60,
                                                   tpu_iterations_per_loop=30, model_dir=str(tmp_path), **FAST))
    assert summary["global_step"] == 60 and summary["accuracy"] > 0.5
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["estimator"] == "TPUEstimator" and info["strategy"] == "tpu"
    model = tf.keras.models.load_model(tmp_path / "keras_model.h5", compile=False)
    assert model.output_shape == (None, 10)
    serving = tf.saved_model.load(summary["export"]).signatures["serving_default"]
    assert set(serving.structured_outputs) == {"probabilities", "classes"}


def launch(model_dir, *roles):
    """Trains digits for 60 steps through `python -m trainer.launch_local` with the given roles."""
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.launch_local", *roles, "--timeout=240", "--",
         "--data=digits", "--backbone=small_cnn", f"--model_dir={model_dir}", "--train_steps=60",
         "--save_checkpoints_steps=30", "--eval_throttle_secs=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_chief_worker_and_evaluator_over_tf_config(tmp_path):
    model_dir = tmp_path / "mw"
    proc, summary = launch(model_dir, "--workers=1", "--evaluator")
    assert summary["global_step"] == 60
    info = json.loads((model_dir / "run_info.json").read_text())
    assert info["strategy"] == "multi_worker" and info["num_replicas"] == 2
    served = json.loads((model_dir / "eval_metrics.json").read_text())
    assert served.get("last_evaluation", served)["global_step"] == 60
    assert (model_dir / "keras_model.h5").exists()
    assert not list(model_dir.glob("tmp_worker*")), "workers leave no clutter"
    assert "[evaluator]" in proc.stderr and "[worker0]" in proc.stderr
    assert list((model_dir / "eval").glob("events.out.tfevents.*")), "the evaluator evaluated"


def test_a_failing_task_fails_the_launch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--timeout=120", "--",
         "--data=/no/such/data", f"--model_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    assert "[chief] error: --data=/no/such/data does not exist" in proc.stderr


@pytest.mark.slow  # A third cluster (chief, worker and evaluator run in make test): make test's 20 minutes.
def test_parameter_server_cluster_trains(tmp_path):
    model_dir = tmp_path / "ps"
    proc, summary = launch(model_dir, "--workers=1", "--ps=1")
    assert summary["global_step"] >= 60  # Asynchronous updates may overshoot by a step or two.
    info = json.loads((model_dir / "run_info.json").read_text())
    assert info["strategy"] == "parameter_server"
    assert "[ps0]" in proc.stderr


def test_an_export_second_taken_by_another_task_is_retried_in_the_next():
    """Two tasks of a cluster (the chief's last export, the evaluator's) exporting into one root in the same second:
    TensorFlow refuses the second's temp-<seconds> folder; the export runs again a second later (seen under load)."""
    from trainer.engines.estimator.exporters import export_apart

    calls = []

    def export():
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError("Export directory b'/x/export/best/temp-1' already exists, and isn't empty.")
        return b"/x/export/best/2"

    assert export_apart(export) == "/x/export/best/2" and len(calls) == 2

    renamed = []

    def export_renamed():  # The other task's rename of the same second's folder came first.
        renamed.append(1)
        if len(renamed) == 1:
            raise tf.errors.AlreadyExistsError(None, None, "file already exists")
        return "/x/export/best/3"

    assert export_apart(export_renamed) == "/x/export/best/3"

    def broken():
        raise AssertionError("something else")

    with pytest.raises(AssertionError, match="something else"):
        export_apart(broken)
