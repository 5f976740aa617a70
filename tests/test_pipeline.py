"""The retraining pipeline (trainer/pipeline): the compiled KFP spec, the Vertex AI requests of `submit` and
`schedule --dry_run`, and whole runs with kfp.local on digits (train -> gate -> promote -> register -> deploy,
the cloud steps as dry runs): a first champion, a challenger that wins, one the gate refuses, a failing step, and
a pipeline SIGKILLed in its train step whose rerun resumes the training.

On TensorFlow 2.21 (.venv-keras has kfp); the kfp.local runs are slow (`make test-slow`)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO

kfp = pytest.importorskip("kfp", reason="kfp is installed in .venv-keras (the pipeline extra)")
pytestmark = pytest.mark.tf221
TINY = ["--engine=keras", "--backbone=small_cnn", "--image_size=16", "--eval_throttle_secs=0"]
IMAGE = "us-central1-docker.pkg.dev/proj/trainer/trainer:keras-cpu-v7"


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_") and k != "TF_USE_LEGACY_KERAS"}
    return env | {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def pipeline(*args, cwd=REPO, timeout=600):
    return subprocess.run([sys.executable, "-m", "trainer.pipeline", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


# ---- The compiled spec and the Vertex AI requests -------------------------------------------------------------

def test_the_compiled_spec_has_the_steps_parameters_and_image(tmp_path):
    proc = pipeline("compile", f"--output={tmp_path / 'retrain.yaml'}", f"--image={IMAGE}")
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load((tmp_path / "retrain.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "trainer-retrain"
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data", "champion_dir", "model_dir", "trainer_flags", "run_id", "register_model", "serving_image",
            "endpoint"} <= set(parameters)
    assert parameters["trainer_flags"]["parameterType"] == "LIST" and "defaultValue" not in parameters["data"]
    executors = spec["deploymentSpec"]["executors"]
    assert sorted(executors) == ["exec-deploy", "exec-gate", "exec-promote", "exec-register", "exec-train"]
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert "pip install" not in " ".join(container["command"]), name  # kfp is in the trainer's image.
    tasks = {}

    def walk(dag):
        for name, task in dag.get("tasks", {}).items():
            tasks[name] = task
            inner = spec["components"].get(task["componentRef"]["name"], {})
            walk(inner.get("dag", {}))

    walk(spec["root"]["dag"])
    assert {"train", "gate", "promote", "register", "deploy"} <= set(tasks)
    for name in ("train", "gate", "promote", "register", "deploy"):
        assert tasks[name]["cachingOptions"] == {}, name  # Never cached: a new week is a new training.
    conditions = [t["triggerPolicy"]["condition"] for t in tasks.values() if "triggerPolicy" in t]
    assert any("'promote'" in c for c in conditions) and any("register_model" in c for c in conditions)
    assert executors["exec-train"]["container"]["resources"]["resourceCpuLimit"] == "8"  # The defaults.
    assert executors["exec-train"]["container"]["resources"]["resourceMemoryLimit"] == "32G"


def test_the_train_step_asks_for_the_machine_given(tmp_path):
    proc = pipeline("compile", f"--output={tmp_path / 'gpu.yaml'}", f"--image={IMAGE}", "--train_cpu=4",
                    "--train_memory=16G", "--train_accelerator=NVIDIA_TESLA_T4", "--train_accelerator_count=2")
    assert proc.returncode == 0, proc.stderr
    executors = yaml.safe_load((tmp_path / "gpu.yaml").read_text())["deploymentSpec"]["executors"]
    resources = executors["exec-train"]["container"]["resources"]
    assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) == ("4", "16G")
    assert resources["accelerator"]["resourceType"] == "NVIDIA_TESLA_T4" and resources["accelerator"]["count"] == "2"
    assert "resources" not in executors["exec-gate"]["container"]  # The other steps are small.


def test_schedule_and_submit_dry_runs_print_valid_requests(tmp_path):
    from google.cloud import aiplatform_v1

    flags = ["--", "--data=gs://b/flowers/train-*", "--champion_dir=gs://b/champions/flowers",
             "--backbone=mobilenet_v2", "--train_steps=2000"]
    proc = pipeline("schedule", "--project=proj", "--region=europe-west4", "--bucket=gs://b/ml", "--cron=0 3 * * 1",
                    "--time_zone=Europe/Paris", "--register", "--serving_image=img:serve", "--endpoint=42",
                    f"--image={IMAGE}", "--dry_run", *flags)
    assert proc.returncode == 0, proc.stderr
    request = aiplatform_v1.CreateScheduleRequest.from_json(proc.stdout)
    schedule = request.schedule
    assert request.parent == "projects/proj/locations/europe-west4"
    assert schedule.cron == "TZ=Europe/Paris 0 3 * * 1" and schedule.max_concurrent_run_count == 1
    job = schedule.create_pipeline_job_request.pipeline_job
    values = {k: v for k, v in job.runtime_config.parameter_values.items()}
    assert job.runtime_config.gcs_output_directory == "gs://b/ml/pipeline_root"
    assert values["data"] == "gs://b/flowers/train-*" and values["champion_dir"] == "gs://b/champions/flowers"
    assert values["model_dir"] == "gs://b/ml/retrain" and list(values["trainer_flags"]) == flags[3:]
    assert values["register_model"] is True and values["serving_image"] == "img:serve" and values["endpoint"] == "42"
    assert job.pipeline_spec["pipelineInfo"]["name"] == "trainer-retrain"
    assert proc.stdout.count(IMAGE) == 5  # Every step runs in the trainer image.
    # submit, from a compiled spec:
    assert pipeline("compile", f"--output={tmp_path / 'r.yaml'}", f"--image={IMAGE}").returncode == 0
    proc = pipeline("submit", "--project=proj", "--region=us-central1", "--bucket=gs://b",
                    f"--pipeline={tmp_path / 'r.yaml'}", "--display_name=flowers-weekly", "--run_id=w49",
                    "--service_account=sa@proj.iam.gserviceaccount.com", "--register", "--serving_image=img:serve",
                    "--parent_model=123", "--endpoint=42", "--machine_type=n1-standard-8", "--dry_run", *flags)
    assert proc.returncode == 0, proc.stderr
    run = aiplatform_v1.CreatePipelineJobRequest.from_json(proc.stdout)
    assert run.pipeline_job_id.startswith("trainer-retrain-") and run.pipeline_job.display_name == "flowers-weekly"
    assert run.pipeline_job.service_account == "sa@proj.iam.gserviceaccount.com"
    values = dict(run.pipeline_job.runtime_config.parameter_values)
    assert (values["run_id"], values["parent_model"], values["machine_type"], values["display_name"]) == (
        "w49", "123", "n1-standard-8", "flowers-weekly")


@pytest.mark.parametrize("args, fragment", [
    (["schedule", "--cron=0 3 * *"], "--cron='0 3 * *' must be a cron line of 5 fields"),
    (["schedule", "--cron=0 3 * * 1", "--time_zone=Mars/Olympus"], "--time_zone=Mars/Olympus is not an IANA"),
    (["submit", "--bucket=b"], "--bucket=b must be gs://"),
    (["submit", "--", "--data=gs://b/x"], "need --champion_dir"),
    (["submit", "--", "--data=gs://b/x", "--champion_dir=champions"], "--champion_dir=champions must be gs://"),
    (["submit", "--", "--data=gs://b/x", "--champion_dir=gs://b/c", "--learning_rate=-1"], "--learning_rate"),
    (["submit", "--", "--data=gs://b/x", "--champion_dir=gs://b/c", "--promote=true"], "the pipeline gates"),
    (["submit", "--endpoint=1", "--", "--data=gs://b/x", "--champion_dir=gs://b/c"], "give --register too"),
    (["submit", "--pipeline=nope.yaml", "--", "--data=gs://b/x", "--champion_dir=gs://b/c"], "does not exist"),
    (["schedule"], "the following arguments are required: --cron"),
    (["schedule", "--cron=0 3 * * 1", "--run_id=r1"], "--run_id names one run's folder"),
    (["submit", "--register"], "--register needs --serving_image"),
    (["submit", "--", "--data=gs://b/x", "--champion_dir=gs://b/c", "--checkpoint_dir=gs://b/ck"], "checkpoints"),
    (["submit"], "--image is required"),
])
def test_submission_mistakes_are_one_error_line(args, fragment):
    command, rest = args[0], args[1:]
    base = [] if "--bucket=b" in rest else ["--bucket=gs://b"]
    trainer = [] if "--" in rest else ["--", "--data=gs://b/x", "--champion_dir=gs://b/c"]
    proc = pipeline(command, "--project=p", "--region=us-central1", *base, "--dry_run", *rest, *trainer)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and fragment in errors[0], proc.stderr[-1500:]
    assert proc.stdout == "" and "Traceback" not in proc.stderr


@pytest.mark.slow  # Four processes and a SIGKILL (26 s): `make test-slow`.
def test_a_recorded_gate_is_applied_only_against_the_champion_it_compared(tmp_path):
    """--promote=false and `trainer.champion promote`: two runs gated against no champion; the first promoted, the
    second refused as stale (its decision kept); a promotion killed between CHAMPION.json and run_info.json is
    brought up to date when run again."""
    def train(name):
        proc = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", *TINY, "--train_steps=5",
                               f"--model_dir={name}", "--champion_dir=champ", "--promote=false"], cwd=tmp_path,
                              env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "CHAMPION.json left as it is (--promote=false)" in proc.stderr
        return json.loads((tmp_path / name / "run_info.json").read_text())["promotion"]

    def promote(name, **env):
        proc = subprocess.run([sys.executable, "-m", "trainer.champion", "promote", "--champion_dir=champ",
                               f"--model_dir={name}"], cwd=tmp_path, env=_env() | env, capture_output=True,
                              text=True, timeout=300)
        return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr

    assert train("a")["pending"] and train("b")["decision"] == "promote"
    assert not (tmp_path / "champ" / "CHAMPION.json").exists()
    status, _, _ = promote("a", TRAINER_FAULTPOINT="deferred_promoted")  # SIGKILL after the pointer moved.
    assert status == -signal.SIGKILL
    version = json.loads((tmp_path / "champ" / "CHAMPION.json").read_text())["version"]
    assert "pending" in json.loads((tmp_path / "a" / "run_info.json").read_text())["promotion"]  # Not yet written.
    status, said, _ = promote("a")
    assert status == 0 and said["promoted"] is True and said["version"] == version
    assert said["reason"] == f"already promoted by this run as version {version}"
    record = json.loads((tmp_path / "a" / "run_info.json").read_text())["promotion"]
    assert record["promoted"] is True and "pending" not in record
    status, said, _ = promote("b")
    assert status == 0 and said["promoted"] is False and "the champion changed since this run's gate" in said["reason"]
    assert json.loads((tmp_path / "champ" / "CHAMPION.json").read_text())["version"] == version
    assert json.loads((tmp_path / "b" / "run_info.json").read_text())["promotion"]["decision"] == "promote"
    status, _, err = promote("nowhere")
    assert status == 1 and "error: --model_dir=nowhere holds no finished run" in err.splitlines()[-1]


# ---- Whole runs with kfp.local ---------------------------------------------------------------------------------

def local(tmp_path, run_id, *flags, extra=(), timeout=600):
    return pipeline("local", f"--pipeline_root={tmp_path / 'root'}", f"--run_id={run_id}", *extra, "--",
                    "--data=digits", "--champion_dir=champions", "--model_dir=runs", *TINY, *flags, cwd=tmp_path,
                    timeout=timeout)


def pointer(tmp_path) -> dict:
    return json.loads((tmp_path / "champions" / "CHAMPION.json").read_text())


@pytest.mark.slow
def test_the_pipeline_promotes_a_first_champion_then_a_better_one_and_refuses_a_worse_one(tmp_path):
    first = local(tmp_path, "r1", "--train_steps=5", extra=["--register", "--serving_image=img:serve",
                                                            "--endpoint=42"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert pointer(tmp_path)["source_run"] == str(tmp_path / "runs" / "r1")
    log = first.stdout + first.stderr
    assert "promote: promoted (no champion yet)" in log
    assert "image img:serve" in log and '"imageUri": "img:serve"' in log  # register's dry run
    assert 'deploy: {"endpoint": "projects/local/locations/us-central1/endpoints/42"' in log and "@DRY_RUN" in log
    # A better challenger, warm-started from the champion: gated, promoted.
    second = local(tmp_path, "r2", "--train_steps=60")
    assert second.returncode == 0, second.stderr[-3000:]
    now = pointer(tmp_path)
    assert now["source_run"] == str(tmp_path / "runs" / "r2") and now["previous"] is not None
    info = json.loads((tmp_path / "runs" / "r2" / "run_info.json").read_text())
    assert info["warm_start"]["path"] == str(tmp_path / "champions" / now["previous"] / "keras_model.h5")
    assert info["promotion"]["promoted"] is True and info["promotion"]["gate"]["test"] == "mcnemar"
    assert "pending" not in info["promotion"]
    # One the gate must refuse (a margin no model clears): the run succeeds, nothing is promoted.
    third = local(tmp_path, "r3", "--train_steps=60", "--promote_margin=0.9")
    assert third.returncode == 0, third.stderr[-3000:]
    assert pointer(tmp_path) == now
    assert "gate: keep" in third.stdout + third.stderr and "Executing task 'promote'" not in third.stderr
    assert json.loads((tmp_path / "runs" / "r3" / "run_info.json").read_text())["promotion"]["decision"] == "keep"
    # The store as retrain.sh leaves it: two versions, the pointer on the second, the first in its chain.
    versions = sorted(p.name for p in (tmp_path / "champions").iterdir() if p.is_dir())
    assert len(versions) == 2 and now["version"] == versions[-1] and now["chain"] == versions[:1]
    # A step that fails fails the pipeline with the trainer's error line, last.
    failed = pipeline("local", f"--pipeline_root={tmp_path / 'root'}", "--run_id=r4", "--", "--data=no/such/folder",
                      "--champion_dir=champions", "--model_dir=runs", *TINY, cwd=tmp_path)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == \
        "error: step train: --data=no/such/folder does not exist (exit status 1)", failed.stderr[-2000:]


@pytest.mark.slow
def test_a_pipeline_stopped_or_killed_in_its_train_step_resumes_the_training_when_run_again(tmp_path):
    """SIGTERM to the `local` command alone: the trainer saves its checkpoint, nothing is left running, exit 143 and
    the command to resume. Then SIGKILL to the whole pipeline. The same command each time resumes the training."""
    flags = ["--train_steps=400", "--save_checkpoints_steps=40"]
    command = [sys.executable, "-m", "trainer.pipeline", "local", f"--pipeline_root={tmp_path / 'root'}",
               "--run_id=k1", "--", "--data=digits", "--champion_dir=champions", "--model_dir=runs", *TINY, *flags]
    run = tmp_path / "runs" / "k1"

    def steps_saved():
        return sorted(int(p.name.split("-")[1].split(".")[0]) for p in run.glob("model.ckpt-*.index"))

    def start_and_wait_past(step):
        proc = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not [s for s in steps_saved() if s > step]:
            assert proc.poll() is None, "the pipeline ended before the checkpoint awaited"
            time.sleep(0.2)
        assert [s for s in steps_saved() if s > step], "no new checkpoint in 300 s"
        return proc

    proc = start_and_wait_past(0)
    proc.send_signal(signal.SIGTERM)  # The command alone, as `kill PID` does.
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "pipeline: stopped by SIGTERM; run the same command to resume run k1"
    assert "preempted at step" in (run / "train.log").read_text()
    leftovers = subprocess.run(["pgrep", "-f", f"--model_dir={run}"], capture_output=True, text=True).stdout
    assert leftovers == "", leftovers  # Nothing left training without its pipeline.
    stopped_at = steps_saved()[-1]
    proc = start_and_wait_past(stopped_at)
    os.killpg(proc.pid, signal.SIGKILL)  # The pipeline, its step and the trainer.
    proc.wait()
    killed_at = steps_saved()[-1]
    assert stopped_at < killed_at < 400 and not (tmp_path / "champions" / "CHAMPION.json").exists()
    again = local(tmp_path, "k1", *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert f"resuming from step {stopped_at}" in log and f"resuming from step {killed_at}" in log, log[-2000:]
    assert json.loads((run / "run_info.json").read_text())["promotion"]["promoted"] is True
    assert pointer(tmp_path)["source_run"] == str(run)
