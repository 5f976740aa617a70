"""Packaging and Vertex AI submission: the sdist on Python 3.10, the CustomJob dry run, Cloud Build."""
import glob
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).


def python310():
    candidates = [shutil.which("python3.10")] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out)], cwd=REPO, check=True,
                   capture_output=True)
    (path,) = out.glob("trainer-*.tar.gz")
    return path


def test_sdist_ships_the_package_and_not_the_tests(sdist):
    names = tarfile.open(sdist).getnames()
    assert any(n.endswith("trainer/task.py") for n in names)
    assert any(n.endswith("trainer/stages/experiment.py") for n in names)
    assert not any("/tests/" in n for n in names)


@pytest.mark.skipif(python310() is None, reason="no Python 3.10 interpreter on this machine")
def test_sdist_installs_and_runs_on_python_3_10(sdist, tmp_path):
    """Vertex's prebuilt TF 2.15 images run Python 3.10 and bring TensorFlow themselves."""
    py = python310()
    subprocess.run([py, "-m", "venv", str(tmp_path / "venv")], check=True)
    vpy = str(tmp_path / "venv" / "bin" / "python")
    # TensorFlow is an extra (the image has it), so only the package and absl are needed for --helpfull.
    subprocess.run([vpy, "-m", "pip", "install", "-q", "--no-deps", str(sdist), "absl-py"], check=True,
                   capture_output=True)
    compiled = subprocess.run([vpy, "-m", "compileall", "-q", str(tmp_path / "venv" / "lib")],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-2000:]
    proc = subprocess.run([vpy, "-m", "trainer.task", "--helpfull"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--backbone" in proc.stdout and "--strategy" in proc.stdout


def submit(*args):
    return subprocess.run([sys.executable, "scripts/submit_vertex.py", "--project=proj", "--region=us-central1",
                           "--bucket=gs://my-bucket", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def parse_job(stdout):
    from google.cloud import aiplatform_v1

    return aiplatform_v1.CustomJob.from_json(stdout)


def test_dry_run_python_package_job():
    proc = submit("--dry_run", "--display_name=flowers", "--workers=2", "--evaluator", "--package_tag=abc123",
                  "--", "--data=gs://my-bucket/data/train-*", "--backbone=mobilenet_v2")
    assert proc.returncode == 0, proc.stderr
    job = parse_job(proc.stdout)
    pools = job.job_spec.worker_pool_specs
    assert len(pools) == 4
    assert [p.replica_count for p in pools] == [1, 2, 0, 1]
    chief = pools[0].python_package_spec
    assert chief.executor_image_uri == "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-15.py310:latest"
    assert list(chief.package_uris) == ["gs://my-bucket/packages/abc123/trainer-0.1.0.tar.gz"]
    assert chief.python_module == "trainer.task"
    assert list(chief.args) == ["--data=gs://my-bucket/data/train-*", "--backbone=mobilenet_v2"]
    assert job.job_spec.base_output_directory.output_uri_prefix.startswith("gs://my-bucket/runs/flowers/")
    assert job.display_name == "flowers"


def test_dry_run_custom_container_with_gpus():
    proc = submit("--dry_run", "--image_uri=us-central1-docker.pkg.dev/proj/trainer/trainer:abc",
                  "--accelerator_type=NVIDIA_TESLA_T4", "--accelerator_count=2", "--", "--data=digits")
    assert proc.returncode == 0, proc.stderr
    (pool,) = parse_job(proc.stdout).job_spec.worker_pool_specs
    assert pool.container_spec.image_uri.endswith("trainer:abc")
    assert list(pool.container_spec.args) == ["--data=digits"]
    assert pool.machine_spec.accelerator_count == 2


def test_dry_run_defaults_to_the_gpu_image_with_accelerators():
    proc = submit("--dry_run", "--accelerator_type=NVIDIA_TESLA_T4", "--accelerator_count=1", "--", "--data=x")
    pool = parse_job(proc.stdout).job_spec.worker_pool_specs[0]
    assert pool.python_package_spec.executor_image_uri.endswith("tf-gpu.2-15.py310:latest")


@pytest.mark.parametrize("args, fragment", [
    (["--accelerator_type=NVIDIA_TESLA_T4", "--accelerator_count=1",
      "--executor_image_uri=us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-15.py310:latest"], "needs a GPU image"),
    (["--workers=2", "--", "--strategy=one_device"], "--workers=2 needs --strategy=multi_worker"),
    (["--parameter_servers=1", "--", "--strategy=multi_worker"], "--parameter_servers=1 needs"),
    (["--", "--model_dir=gs://x/y"], "leave --model_dir out"),
])
def test_bad_combinations_are_refused_before_any_upload(args, fragment):
    proc = submit("--dry_run", *args)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error:") and fragment in proc.stderr


def test_bucket_must_be_gcs():
    proc = subprocess.run([sys.executable, "scripts/submit_vertex.py", "--project=p", "--region=r",
                           "--bucket=/tmp/bucket", "--dry_run"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "error: --bucket=/tmp/bucket must be a gs:// URI" in proc.stderr


def test_the_tuning_study_example_parses():
    tuning = yaml.safe_load(open(os.path.join(REPO, "scripts", "hptuning_job.yaml")))
    assert tuning["studySpec"]["metrics"][0]["metricId"] == "accuracy"


def test_spot_job_with_a_tensorboard():
    """Issue 36: Spot capacity, every task restarted together, a timeout, and the run on a Vertex AI TensorBoard."""
    board = "projects/proj/locations/us-central1/tensorboards/123"
    proc = submit("--dry_run", "--engine=keras", "--image_uri=us-central1-docker.pkg.dev/proj/trainer/trainer:k",
                  "--workers=1", "--spot", "--timeout=24h", f"--tensorboard={board}",
                  "--service_account=train@proj.iam.gserviceaccount.com", "--", "--data=digits")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"strategy": "SPOT"' in proc.stdout  # Enum names, as the REST API documents the body.
    spec = parse_job(proc.stdout).job_spec
    from google.cloud import aiplatform_v1

    assert spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
    assert spec.scheduling.restart_job_on_worker_restart is True  # On with --spot: the trainer resumes.
    assert spec.scheduling.timeout.total_seconds() == 86400
    assert spec.tensorboard == board and spec.service_account == "train@proj.iam.gserviceaccount.com"


@pytest.mark.parametrize("args, strategy, restart, timeout", [
    ([], None, False, None),
    (["--spot", "--restart_on_worker_restart=false"], "SPOT", False, None),
    (["--restart_on_worker_restart"], None, True, None),
    (["--timeout=90m"], None, False, 5400),
    (["--timeout=3600"], None, False, 3600),
])
def test_scheduling_follows_the_flags(args, strategy, restart, timeout):
    proc = submit("--dry_run", *args, "--", "--data=digits")
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = parse_job(proc.stdout).job_spec
    assert ("scheduling" in spec) == bool(strategy or restart or timeout)
    if strategy:
        assert spec.scheduling.strategy.name == strategy
    assert spec.scheduling.restart_job_on_worker_restart is restart
    assert (spec.scheduling.timeout.total_seconds() if timeout else None) == timeout


@pytest.mark.parametrize("args, fragment", [
    (["--tensorboard=projects/proj/locations/us-central1/tensorboards/1"], "--tensorboard needs --service_account"),
    (["--tensorboard=my-board", "--service_account=sa@p.iam.gserviceaccount.com"], "is not a TensorBoard resource"),
    (["--timeout=0"], "--timeout=0: give a positive duration"),
    (["--timeout=1w"], "--timeout=1w: give a positive duration"),
    (["--spot", "--workers=1", "--accelerator_type=TPU_V3", "--accelerator_count=8", "--image_uri=x",
      "--", "--data=digits", "--strategy=multi_worker"], "--spot does not combine with a TPU pod slice"),
])
def test_bad_scheduling_is_one_error_line_before_any_upload(args, fragment):
    proc = submit("--dry_run", *(args if "--" in args else [*args, "--", "--data=digits"]))
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout[-500:]
    lines = [line for line in proc.stderr.splitlines() if not line.startswith(("WARNING", "I0000", "W0000"))]
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]] and fragment in lines[-1], lines


def test_a_tensorboard_in_another_region_is_a_note():
    proc = submit("--dry_run", "--tensorboard=projects/proj/locations/europe-west4/tensorboards/1",
                  "--service_account=sa@proj.iam.gserviceaccount.com", "--", "--data=digits")
    assert proc.returncode == 0 and "note: the TensorBoard is in europe-west4 and the job in us-central1" in proc.stderr


def test_dry_run_keras_engine_job_uses_the_keras_image():
    proc = submit("--dry_run", "--engine=keras", "--", "--data=digits")
    assert proc.returncode == 1 and proc.stderr.startswith("error: --engine=keras") and "--target keras" in proc.stderr
    proc = submit("--dry_run", "--engine=keras", "--image_uri=us-central1-docker.pkg.dev/proj/trainer/keras:abc",
                  "--", "--data=digits")
    assert proc.returncode == 0, proc.stderr
    (pool,) = parse_job(proc.stdout).job_spec.worker_pool_specs
    assert pool.container_spec.image_uri.endswith("keras:abc")
    assert list(pool.container_spec.args) == ["--data=digits", "--engine=keras"]


def test_the_tf215_only_requirements_live_in_its_extras():
    import re

    text = open(os.path.join(REPO, "setup.py")).read()
    base = text[text.index("INSTALL_REQUIRES = ["):text.index("]", text.index("INSTALL_REQUIRES = ["))]
    assert not re.search(r"tensorflow-estimator|numpy<2|protobuf<5", base)
    assert '"keras-cpu": ["tensorflow-cpu==2.21.*"' in text and '"cpu": ["tensorflow-cpu==2.15.*", *TF215]' in text
    assert 'TF215 = ["tensorflow-estimator==2.15.*", "numpy<2", "protobuf<5"]' in text


def test_no_module_warns_when_compiled():
    """New-user trial 2026-12-04: Python 3.12 printed `SyntaxWarning: invalid escape sequence` from export.py on the
    console of predict, report and export_tflite whenever no bytecode was cached."""
    import warnings
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "trainer").rglob("*.py")) + sorted((root / "scripts").glob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")


def test_submit_needs_no_tensorflow():
    """Issue 36: the build's submit step installs trainer[vertex] only; checking the trainer flags imported TensorFlow
    (to resolve --engine) and so failed there. Here TensorFlow cannot be imported at all."""
    code = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path('scripts/submit_vertex.py', run_name='__main__')")
    for engine in ([], ["--engine=keras", "--image_uri=x/y:z"], ["--engine=estimator", "--image_uri=x/y:z"]):
        proc = subprocess.run([sys.executable, "-c", code, "submit_vertex.py", "--project=p", "--region=us-central1",
                               "--bucket=gs://b", "--dry_run", *engine, "--", "--data=digits", "--backbone=small_cnn"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", code, "submit_vertex.py", "--project=p", "--region=us-central1",
                          "--bucket=gs://b", "--dry_run", "--", "--data=digits", "--engine=tf3"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "error: --engine=tf3 is not valid" in bad.stderr, bad.stderr


def test_the_multi_gpu_script_refuses_without_a_gpu_in_one_line():
    """scripts/train_local_multi_gpu.sh on a machine without a GPU (this one): one `error:` line, exit 1, no training;
    its header names install extras that exist (issue 37: it named a variable nothing reads)."""
    script = os.path.join(REPO, "scripts", "train_local_multi_gpu.sh")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", script, "--data=digits"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no GPU visible to TensorFlow"), proc.stderr[-1000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    header = open(script).read()
    assert "TRAINER_TF_PACKAGE" not in header
    setup = open(os.path.join(REPO, "setup.py")).read()
    for extra in ("keras-gpu", "gpu"):
        assert f'".[{extra}]"' in header and f'"{extra}":' in setup
