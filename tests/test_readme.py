"""The README is executable: every `sh` block of its user-facing sections runs as written, from the project's folder,
with relative paths, on the runtime the block names (new-user trial 2026-12-04 #1: every README command failed on the
Keras engine while the suite, which used absolute temporary paths only, stayed green).

A block names its runtime in the HTML comment before it: `<!-- runtime: keras -->` (TensorFlow 2.21, .venv-keras) or
`<!-- runtime: tf215 -->` (TensorFlow 2.15, .venv); unnamed blocks run on both.
This process's interpreter is the runtime: `make test` runs this file in both venvs, each running its own blocks.
The only change made to a command: `--train_steps` and `--fine_tune_steps` capped at $README_TEST_MAX_STEPS [40]. A
command whose comment says `exits N` must exit N. Not run: `make test` (it is this suite). The commands run in a copy
of the project (its tracked files, the venvs linked in), so earlier runs in the checkout cannot make them resume.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

SECTIONS = ("Two commands", "Running it", "Which engine", "Distribution", "Scheduled retraining", "Using the model")
RUNTIME = "tf215" if tuple(int(p) for p in tf.__version__.split(".")[:2]) <= (2, 15) else "keras"
MAX_STEPS = int(os.environ.get("README_TEST_MAX_STEPS", "40"))
SKIPPED = {"make test"}  # The suite itself.


def blocks(text: str):
    """(section, runtime or None, [commands]) for each `sh` block of SECTIONS, in README order."""
    found, section = [], None
    for part in re.split(r"(?m)^(## [^\n]*)$", text):
        if part.startswith("## "):
            name = part[3:].strip()
            section = name if name.startswith(SECTIONS) else None
            continue
        if section is None:
            continue
        for match in re.finditer(r"(?:<!-- runtime: (\w+) -->\n)?```sh\n(.*?)```", part, re.S):
            found.append((section, match.group(1), commands(match.group(2))))
    return found


def commands(body: str):
    """The block's commands: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def shortened(command: str) -> str:
    return re.sub(r"--(train_steps|fine_tune_steps)=(\d+)",
                  lambda m: f"--{m.group(1)}={min(int(m.group(2)), MAX_STEPS)}", command)


def expected_status(command: str) -> int:
    match = re.search(r"#.*\bexits (\d+)", command)
    return int(match.group(1)) if match else 0


ALL = blocks((REPO / "README.md").read_text())
MINE = [(section, cmds) for section, runtime, cmds in ALL if runtime in (None, RUNTIME)]


def test_the_readme_has_runnable_blocks_for_both_runtimes():
    runtimes = {runtime for _, runtime, _ in ALL}
    assert {"keras", "tf215"} <= runtimes, runtimes
    assert {section for section, _, _ in ALL} >= {"Two commands", "Running it", "Which engine", "Distribution",
                                                  "Scheduled retraining", "Using the model"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project's tracked files (mtimes kept, so make sees the venvs as installed), venvs linked."""
    root = tmp_path_factory.mktemp("readme") / "project"
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    names = [n for n in listed.stdout.split("\0") if n] if listed.returncode == 0 else []
    if not names:  # Not a git checkout (an sdist): everything but the venvs and outputs.
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and not p.relative_to(
            REPO).parts[0].startswith((".venv", "runs", ".git"))]
    for name in names:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, target)
    for venv in (".venv", ".venv-keras"):
        if (REPO / venv).exists():
            (root / venv).symlink_to(REPO / venv, target_is_directory=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("section,cmds", MINE, ids=[f"{i}-{s.replace(' ', '_')}" for i, (s, _) in enumerate(MINE)])
def test_a_readme_block_runs_as_written(project, section, cmds):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("PYTHONPATH", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "TRAINER_FAULTPOINT",
                 "CLOUD_ML_JOB_ID", "VIRTUAL_ENV"):
        env.pop(name, None)
    for command in cmds:
        if command.split("#")[0].strip() in SKIPPED:
            continue
        proc = subprocess.run(["bash", "-c", shortened(command)], cwd=project, env=env, capture_output=True,
                              text=True, timeout=600)
        wanted = expected_status(command)
        assert proc.returncode == wanted, f"{command}\n-> exit {proc.returncode}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
        if wanted:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, f"{command}\n{proc.stderr[-3000:]}"
