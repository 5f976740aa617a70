"""cloudbuild.yaml as Cloud Build would run it (issue 36: its first step failed on every build, since `make test` needs
Python 3.12 for the TF 2.21 leg and the step ran in python:3.11). Each step's image is checked against what its command
needs (the Makefile's own interpreter checks, run with that image's Python version and nothing else on PATH), every
Dockerfile target and build argument named exists, every substitution used is declared, and the check/submit steps'
flags go through scripts/submit_vertex.py itself. The slow tests run the steps' commands verbatim in a copy of the
sources, in a fresh interpreter of the step image's version."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

CONFIG = yaml.safe_load(open(os.path.join(REPO, "cloudbuild.yaml")))
STEPS = {step["id"]: step for step in CONFIG["steps"]}
BUILT_IN = {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "SHORT_SHA", "COMMIT_SHA", "REPO_NAME",
            "BRANCH_NAME", "TAG_NAME", "REVISION_ID"}
ENGINES = ("keras", "estimator")


def command(step) -> str:
    return " ".join(step.get("args", []))


def script(step) -> str:
    """What a `bash -c SCRIPT` step runs."""
    assert step.get("entrypoint") == "bash" and step["args"][0] == "-c", step["id"]
    return step["args"][1]


def substitute(text: str, values: dict) -> str:
    """Cloud Build's substitution: ${_X} and $_X from values, $$ is a literal $."""
    text = re.sub(r"\$\{(\w+)\}|\$(_\w+|PROJECT_ID)", lambda m: values[m.group(1) or m.group(2)], text)
    return text.replace("$$", "$")


def values(**overrides) -> dict:
    found = {"PROJECT_ID": "test-project", **CONFIG["substitutions"], **overrides}
    return {name: str(value) for name, value in found.items()}


def build_env(**overrides) -> dict:
    """options.env, substituted: what every step's process sees."""
    pairs = (substitute(item, values(**overrides)).split("=", 1) for item in CONFIG["options"]["env"])
    return dict(pairs)


def interpreter(version: str):
    """A Python of this major.minor on this machine (PATH or pyenv), or None."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}"))) + [
        shutil.which(f"python{version}")]
    for candidate in filter(None, candidates):
        if "/shims/" in candidate:  # pyenv's shims need pyenv itself.
            continue
        if subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0:
            return candidate
    return None


def image_python(step) -> str:
    match = re.fullmatch(r"python:(\d+\.\d+)(?:-[\w.-]+)?", step["name"])
    assert match, f"step {step['id']} runs {step['name']}, not a python image"
    return match.group(1)


def image_like(tmp_path, version: str, python=None) -> dict:
    """An environment with what a python:VERSION image has for our purposes: that Python (and pip) on PATH, make and
    a shell, an empty HOME (no pyenv), and nothing else."""
    tools = tmp_path / f"image-bin-{version}"
    tools.mkdir(exist_ok=True)
    python = python or interpreter(version)
    for name, run in ((f"python{version}", ""), ("python3", ""), ("python", ""), ("pip", " -m pip")):
        (tools / name).write_text(f'#!/bin/sh\nexec {python}{run} "$@"\n')  # Not a symlink: a venv stays one.
        (tools / name).chmod(0o755)
    for tool in ("make", "sh", "bash", "env", "ls", "cat", "rm", "mkdir", "touch", "git", "dirname", "uname"):
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            os.symlink(found, tools / tool)
    home = tmp_path / f"home-{version}"
    home.mkdir(exist_ok=True)
    return {"PATH": str(tools), "HOME": str(home), "LANG": "C.UTF-8", "PIP_CACHE_DIR": os.path.expanduser(
        "~/.cache/pip"), "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


def sources(tmp_path):
    """The files a build uploads: the tracked files (.gcloudignore leaves out the venvs and outputs)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    copy = tmp_path / "workspace"
    for name in filter(None, listed.stdout.split("\0")):
        if os.path.exists(os.path.join(REPO, name)):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), copy / name)
    return copy


def leg_check(target: str) -> str:
    """The Makefile's interpreter check behind a test leg: the leg's venv stamp rule names it."""
    makefile = open(os.path.join(REPO, "Makefile")).read()
    (prerequisite,) = re.findall(rf"^{re.escape(target)}:\s*(\S+)\s*$", makefile, re.M)
    rule = re.search(rf"^{re.escape(prerequisite)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    (check,) = set(re.findall(r"\b(check-[\w-]+)", rule))
    return check


def leg_steps():
    for step in CONFIG["steps"]:
        targets = re.findall(r"\bmake (test-[\w-]+)", command(step))
        if targets:
            yield step, targets[0]


def test_the_build_tests_each_engine_in_an_image_that_runs_its_leg(tmp_path):
    legs = list(leg_steps())
    assert sorted(target for _, target in legs) == ["test-tf215", "test-tf221"]
    for step, target in legs:
        version = image_python(step)
        if interpreter(version) is None:
            pytest.skip(f"no Python {version} here to stand in for {step['name']}")
        folder = tmp_path / step["id"]
        folder.mkdir()
        shutil.copy(os.path.join(REPO, "Makefile"), folder)
        check = subprocess.run(["make", "--no-print-directory", leg_check(target)], cwd=folder,
                               env=image_like(tmp_path, version), capture_output=True, text=True)
        assert check.returncode == 0, f"{step['id']} in {step['name']}: {check.stderr}"
        # Each leg runs only when its engine is built, and says so otherwise.
        engine = "keras" if target == "test-tf221" else "estimator"
        text = substitute(script(step), values())
        for chosen in ENGINES:
            ran = subprocess.run(["bash", "-c", text.replace(f"make {target}", "echo RAN")], capture_output=True,
                                 text=True, env={**os.environ, **build_env(_ENGINE=chosen)})
            assert ran.stdout.strip() == ("RAN" if chosen == engine else f"skipped: _ENGINE={chosen}"), ran.stdout


def test_the_old_single_image_build_fails_as_the_issue_says(tmp_path):
    """The check above can fail: the TF 2.21 leg's check in a python:3.11-like image is the issue's error."""
    if interpreter("3.11") is None:
        pytest.skip("no Python 3.11 here")
    shutil.copy(os.path.join(REPO, "Makefile"), tmp_path)
    check = subprocess.run(["make", "--no-print-directory", leg_check("test-tf221")], cwd=tmp_path,
                           env=image_like(tmp_path, "3.11"), capture_output=True, text=True)
    assert check.returncode != 0
    assert check.stderr.startswith("error: the Keras engine's tests need Python 3.12 3.13"), check.stderr


def test_images_targets_arguments_and_substitutions_exist():
    dockerfile = open(os.path.join(REPO, "Dockerfile")).read()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I))
    args = set(re.findall(r"^ARG\s+(\w+)", dockerfile, re.M))
    image = STEPS["image"]["args"]
    target = image[image.index("--target") + 1]
    assert target == "${_ENGINE}" and set(ENGINES) <= stages, stages
    for flag, value in zip(image, image[1:]):
        if flag == "--build-arg":
            assert value.split("=")[0] in args, value
    # The base stage for each device exists (FROM tf215-${DEVICE}).
    assert {"tf215-cpu", "tf215-gpu"} <= stages
    used = set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(CONFIG)))
    declared = set(CONFIG["substitutions"]) | BUILT_IN
    assert used <= declared, used - declared
    assert not set(CONFIG["substitutions"]) - used, "declared but never used"
    script = open(os.path.join(REPO, "scripts", "cloudbuild_submit.sh")).read()
    read = set(re.findall(r"\$\{?([A-Z][A-Z_]*)", script)) - {"ACCELERATOR", "TRAINER_FLAGS", "SUBMIT_FLAGS"}
    assert read <= set(build_env()), read - set(build_env())
    pushed = STEPS["push"]["args"][-1]
    assert pushed in image and pushed in CONFIG["images"]
    assert substitute(pushed, values()) == build_env()["IMAGE"]
    assert int(CONFIG["timeout"].rstrip("s")) >= 3600  # The TF 2.15 leg alone takes over 10 minutes.


def submit_script(**overrides):
    """scripts/cloudbuild_submit.sh --dry_run with the build's environment, as the check step runs it."""
    env = {**os.environ, **build_env(**overrides), "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]}
    return subprocess.run(["bash", "scripts/cloudbuild_submit.sh", "--dry_run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_check_and_submit_steps_make_the_job_for_the_engine_built(engine):
    for step in ("check", "submit"):
        assert "bash scripts/cloudbuild_submit.sh" in command(STEPS[step])
    assert command(STEPS["check"]).endswith("bash scripts/cloudbuild_submit.sh --dry_run >/dev/null")
    assert command(STEPS["submit"]).endswith("bash scripts/cloudbuild_submit.sh")
    proc = submit_script(_ENGINE=engine)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from google.cloud import aiplatform_v1

    job = aiplatform_v1.CustomJob.from_json(proc.stdout)
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.container_spec.image_uri == build_env(_ENGINE=engine)["IMAGE"]
    assert pool.container_spec.image_uri.endswith(f"/trainer:{engine}-cpu-manual")
    assert list(pool.container_spec.args)[-1] == f"--engine={engine}"
    assert list(pool.container_spec.args)[:3] == CONFIG["substitutions"]["_TRAINER_ARGS"].split("|")


def test_submit_args_reach_the_job():
    board = "projects/test-project/locations/us-central1/tensorboards/7"
    proc = submit_script(_SUBMIT_ARGS=f"--spot|--tensorboard={board}|--service_account=sa@p.iam.gserviceaccount.com",
                         _TRAINER_ARGS="--data=gs://b/train-*|--head_units=256,128")
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = json.loads(proc.stdout)
    assert job["jobSpec"]["scheduling"]["strategy"] == "SPOT" and job["jobSpec"]["tensorboard"] == board
    assert job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"][:2] == ["--data=gs://b/train-*",
                                                                                  "--head_units=256,128"]


@pytest.mark.parametrize("overrides, fragment", [
    ({"_ENGINE": "tf2"}, "error: _ENGINE=tf2 must be keras (TensorFlow 2.21) or estimator"),
    ({"_DEVICE": "tpu"}, "error: _DEVICE=tpu must be cpu or gpu"),
    ({"_DEVICE": "gpu"}, "error: _DEVICE=gpu builds a CUDA image but _SUBMIT_ARGS asks for no GPU"),
    ({"_SUBMIT_ARGS": "--accelerator_type=NVIDIA_TESLA_T4|--accelerator_count=1"}, "but _DEVICE=cpu builds a CPU"),
    ({"_TRAINER_ARGS": "--data=digits|--train_steps=abc"}, "error: trainer flags:"),
    ({"_SUBMIT_ARGS": "--tensorboard=projects/p/locations/l/tensorboards/1"}, "--tensorboard needs --service_account"),
])
def test_a_bad_substitution_fails_the_first_step_with_one_error_line(overrides, fragment):
    proc = submit_script(**overrides)
    assert proc.returncode != 0 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]


def test_a_gpu_build_with_accelerators_is_accepted():
    proc = submit_script(_DEVICE="gpu", _SUBMIT_ARGS="--accelerator_type=NVIDIA_TESLA_T4|--accelerator_count=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    pool = json.loads(proc.stdout)["jobSpec"]["workerPoolSpecs"][0]
    assert pool["containerSpec"]["imageUri"].endswith(":keras-gpu-manual")
    assert pool["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"


def run_step(step_id: str, tmp_path, workspace, python, extra_env=None):
    step = STEPS[step_id]
    env = {**image_like(tmp_path, image_python(step), python), **build_env(), **(extra_env or {})}
    return subprocess.run(["bash", "-c", substitute(script(step), values())], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=3000)


def fresh_python(tmp_path, version: str) -> str:
    """A bare interpreter of the image's version, as the image has it (no TensorFlow, no package)."""
    base = interpreter(version)
    if base is None:
        pytest.skip(f"no Python {version} here")
    subprocess.run([base, "-m", "venv", str(tmp_path / f"py{version}")], check=True)
    return str(tmp_path / f"py{version}" / "bin" / "python")


@pytest.mark.slow
def test_the_check_and_sdist_steps_run_verbatim_without_tensorflow(tmp_path):
    """In a fresh Python of the step image's version with nothing installed: the check step installs only
    trainer[vertex] (no TensorFlow) and validates the job; the sdist step builds the package."""
    workspace = sources(tmp_path)
    python = fresh_python(tmp_path, image_python(STEPS["check"]))
    check = run_step("check", tmp_path, workspace, python)
    assert check.returncode == 0, check.stderr[-3000:]
    probe = subprocess.run([python, "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0  # The check ran where TensorFlow is not installed, as in the image.
    sdist = run_step("sdist", tmp_path, workspace, fresh_python(tmp_path / "s", image_python(STEPS["sdist"])))
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    assert re.search(r"trainer-[\d.]+\.tar\.gz", sdist.stdout), sdist.stdout


@pytest.mark.slow
def test_the_keras_test_step_builds_its_venv_from_nothing_and_runs_its_leg(tmp_path):
    """The test step verbatim, in a copy of the sources with no venv and a python:3.12-like PATH (no pyenv, no other
    Python): it creates .venv-keras and runs the TF 2.21 leg (narrowed to one test file through MAKEFLAGS, which keeps
    the step's command as it is)."""
    workspace = sources(tmp_path)
    step = STEPS["test-keras"]
    python = fresh_python(tmp_path, image_python(step))
    proc = run_step("test-keras", tmp_path, workspace, python,
                    {"MAKEFLAGS": "TESTS=tests/test_console_quiet.py"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-2000:]
    assert os.path.exists(workspace / ".venv-keras" / ".installed") and not os.path.exists(workspace / ".venv")
