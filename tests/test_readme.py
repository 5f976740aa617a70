"""The README and docs/ are executable: every `sh` block of README.md and of the docs/ pages runs as written, from the
project's folder, with relative paths, on the runtime the block names (new-user trial 2026-12-04 #1: every README
command failed on the Keras engine while the suite, which used absolute temporary paths only, stayed green).

A block names its runtime in the HTML comment before it: `<!-- runtime: keras -->` (TensorFlow 2.21, .venv-keras) or
`<!-- runtime: tf215 -->` (TensorFlow 2.15, .venv); unnamed blocks run on both. A block that cannot run here says
why instead: `<!-- not run: needs the ImageNet weights ... -->` (downloads, your photos, a cloud project).
This process's interpreter is the runtime: `make test` runs this file in both venvs, each running its own blocks.
The only change made to a command: `--train_steps` and `--fine_tune_steps` capped at $README_TEST_MAX_STEPS [40]. A
command whose comment says `exits N` must exit N. Not run: `make test` (it is this suite). The commands run in a copy
of the project (its tracked files, the venvs linked in), so earlier runs in the checkout cannot make them resume.
Pages run in the order below (later pages use the runs of earlier ones: runs/digits of docs/running.md).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

PAGES = ["README.md", "docs/running.md", "docs/data.md", "docs/using.md", "docs/distribution.md", "docs/engines.md",
         "docs/retraining.md", "docs/recipe.md", "docs/watching.md", "docs/restarts.md", "docs/vertex.md",
         "docs/examples.md", "docs/performance.md", "docs/layout.md", "docs/tests.md", "docs/adding.md"]
RUNTIME = "tf215" if tuple(int(p) for p in tf.__version__.split(".")[:2]) <= (2, 15) else "keras"
MAX_STEPS = int(os.environ.get("README_TEST_MAX_STEPS", "40"))
SKIPPED = {"make test"}  # The suite itself.
_BLOCK = re.compile(r"(?:<!-- (?:runtime: (\w+)|not run: ([^>]+?)) -->\n)?```sh\n(.*?)```", re.S)


def blocks(page: str):
    """(page, runtime or None, reason not run or None, [commands]) for each `sh` block of a page, in order."""
    text = (REPO / page).read_text()
    return [(page, m.group(1), m.group(2), commands(m.group(3))) for m in _BLOCK.finditer(text)]


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


ALL = [block for page in PAGES for block in blocks(page)]
MINE = [(page, cmds) for page, runtime, not_run, cmds in ALL if runtime in (None, RUNTIME) and not not_run]


def test_every_page_is_run_and_its_blocks_run_on_both_runtimes():
    pages = {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")} | {"README.md"}
    assert pages - {"docs/flags.md"} <= set(PAGES), sorted(pages - set(PAGES))
    runtimes = {runtime for _, runtime, not_run, _ in ALL if not not_run}
    assert {"keras", "tf215"} <= runtimes, runtimes
    assert {page for page, _, not_run, _ in ALL if not not_run} >= {"README.md", "docs/running.md", "docs/using.md",
                                                                    "docs/engines.md", "docs/retraining.md"}


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
@pytest.mark.parametrize("page,cmds", MINE, ids=[f"{i}-{p.replace('/', '_')}" for i, (p, _) in enumerate(MINE)])
def test_a_readme_block_runs_as_written(project, page, cmds):
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
