"""Faults at scale: corrupt records, a corrupt champion pointer, Cloud Storage unreachable, a killed worker.

Each fault is injected for real (bytes flipped in a real shard, a truncated CHAMPION.json on a local folder and
on the loopback GCS server, TensorFlow's own gs:// filesystem without network, `kill -9` of a worker process)
and must end either in a completed run that counts and names the fault, or in one `error:` line, never a
traceback.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from test_bad_inputs import cli
from trainer import champion

# --- A corrupt CHAMPION.json -----------------------------------------------------------------------------------


class ChampionFolder:
    """Versions and a CHAMPION.json written directly, on a local folder or on the loopback GCS server."""

    def __init__(self, root: str, client=None):
        self.root, self.client = root, client

    def put(self, name: str, data: bytes) -> None:
        if self.client is None:
            path = os.path.join(self.root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        else:
            bucket, _, prefix = self.root[len("gs://"):].partition("/")
            self.client.bucket(bucket).blob(f"{prefix}/{name}").upload_from_string(data)

    def version(self, name: str, accuracy: float) -> None:
        self.put(f"{name}/keras_model.h5", b"not needed by these commands")
        self.put(f"{name}/metrics.json", json.dumps({"accuracy": accuracy, "metric": "accuracy"}).encode())


def champion_cli(capsys, *args):
    """Runs `python -m trainer.champion` in-process: (status, stdout, the error lines)."""
    status = champion.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(params=["local", "gcs"])
def champion_folder(request, tmp_path):
    if request.param == "local":
        return ChampionFolder(str(tmp_path / "champion"))
    _, client = request.getfixturevalue("gcs_server")
    return ChampionFolder("gs://test-bucket/champions/x", client)


def test_a_corrupt_champion_pointer_is_one_error_and_rollback_repairs_it(capsys, tmp_path, champion_folder):
    root = champion_folder.root
    champion_folder.version("v1", 0.9)
    champion_folder.version("v2", 0.95)
    champion_folder.put("v3/keras_model.h5", b"a version whose copy never finished: no metrics.json")
    champion_folder.put(champion.POINTER, b'{"version": "v2", "metr')  # Truncated by a partial write.
    pointer_file = f"{root}/{champion.POINTER}"

    for command in (["show"], ["rollback"]):
        status, _, errors = champion_cli(capsys, *command, f"--champion_dir={root}")
        assert status == 1 and len(errors) == 1, (command, errors)
        assert f"{pointer_file} is unreadable (not valid JSON" in errors[0] and "rollback" in errors[0]
    # A run that would warm-start from, or promote into, this folder stops before it builds anything.
    status, errors = cli(capsys, "--data=digits", "--backbone=mlp", f"--model_dir={tmp_path / 'run'}",
                         f"--champion_dir={root}", "--warm_start_from=champion")
    assert status == 1 and len(errors) == 1 and f"{pointer_file} is unreadable" in errors[0], errors
    assert not (tmp_path / "run").exists()
    # History still lists the complete versions (not v3), with a warning about the pointer.
    status, out, errors = champion_cli(capsys, "history", f"--champion_dir={root}")
    assert status == 0 and not errors
    assert [line.split()[0] for line in out.splitlines()] == ["v1", "v2"]
    # Rollback to an incomplete version is refused; to a complete one it rewrites the pointer.
    status, _, errors = champion_cli(capsys, "rollback", f"--champion_dir={root}", "--to=v3")
    assert status == 1 and "--to=v3 is not a complete version; versions: v1, v2" in errors[0]
    status, out, _ = champion_cli(capsys, "rollback", f"--champion_dir={root}", "--to=v1")
    assert status == 0 and json.loads(out)["version"] == "v1"
    status, out, _ = champion_cli(capsys, "show", f"--champion_dir={root}")
    assert status == 0 and json.loads(out)["metrics"]["accuracy"] == 0.9
    # A pointer naming a missing or incomplete version is reported the same way.
    for version in ("v9", "v3"):
        champion_folder.put(champion.POINTER, json.dumps({"version": version}).encode())
        status, _, errors = champion_cli(capsys, "show", f"--champion_dir={root}")
        assert status == 1 and f"names version {version}, which is missing or incomplete" in errors[0]
        status, errors = cli(capsys, "--data=digits", "--backbone=mlp", f"--model_dir={tmp_path / 'run'}",
                             f"--champion_dir={root}")
        assert status == 1 and f"names version {version}, which is missing" in errors[0], errors
    # The repair also works through a real process, and leaves no temporary file behind.
    proc = subprocess.run([sys.executable, "-m", "trainer.champion", "rollback", f"--champion_dir={root}",
                           "--to=v2"], cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["version"] == "v2"
    if champion_folder.client is None:
        assert sorted(os.listdir(root)) == [".lock", champion.POINTER, "v1", "v2", "v3"]


def test_history_of_a_missing_champion_folder_is_an_error(capsys, tmp_path):
    status, out, errors = champion_cli(capsys, "history", f"--champion_dir={tmp_path / 'nothing'}")
    assert status == 1 and out == "" and errors == [f"error: --champion_dir={tmp_path / 'nothing'} does not exist"]


# --- Cloud Storage unreachable through TensorFlow's own gs:// filesystem ------------------------------------------


def test_unreachable_cloud_storage_is_one_error_naming_the_path(capsys, tmp_path, monkeypatch):
    # No network here: TensorFlow's gs:// filesystem fails to resolve the host, as without a route on a laptop.
    monkeypatch.setenv("AIP_MODEL_DIR", "/gcs/nobucket/x")  # Vertex's FUSE path, mapped to gs://nobucket/x.
    started = time.time()
    status, errors = cli(capsys, "--data=digits", "--backbone=mlp")
    assert status == 1 and len(errors) == 1, errors
    assert errors[0].startswith("error: --model_dir=gs://nobucket/x: TensorFlow cannot reach Cloud Storage (")
    assert "no network route" in errors[0] and "credentials" in errors[0] and "bucket" in errors[0]
    assert time.time() - started < 30
    monkeypatch.delenv("AIP_MODEL_DIR")
    run = f"--model_dir={tmp_path / 'run'}"
    for flag, value, named in (("data", "gs://nobucket/records/train-*", "gs://nobucket/records"),
                               ("eval_data", "gs://nobucket/records/validation-*", "gs://nobucket/records"),
                               ("tensorboard_dir", "gs://nobucket/tb", "gs://nobucket/tb")):
        data = [] if flag == "data" else ["--data=digits"]
        status, errors = cli(capsys, *data, f"--{flag}={value}", "--backbone=mlp", run)
        assert status == 1 and len(errors) == 1, errors
        assert errors[0].startswith(f"error: --{flag}={named}: TensorFlow cannot reach Cloud Storage"), errors
