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


# --- Corrupt, truncated and undecodable TFRecords -----------------------------------------------------------------


def write_shards(folder, prefix, shards=2, per_shard=40, bad_image_at=()):
    """PNG records of two classes (visible in their colour); records at `bad_image_at` hold bytes that are no image."""
    import io

    import numpy as np
    from PIL import Image

    from trainer.data import tfrecords

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = folder / f"{prefix}-{s:05d}-of-{shards:05d}.tfrecord"
        with tf_writer(str(path)) as writer:
            for i in range(per_shard):
                label = (s * per_shard + i) % 2
                pixels = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
                pixels[..., label] += 180
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                image = b"GIF89a but truncated" if (s, i) in bad_image_at else buffer.getvalue()
                writer.write(tfrecords.encode_example(image, label, ("cats", "dogs")[label]))
        paths.append(path)
    (folder / "labels.txt").write_text("cats\ndogs\n")
    return paths


def tf_writer(path):
    import tensorflow as tf

    return tf.io.TFRecordWriter(path)


def damage(path, at: float, length=64):
    """Flips `length` bytes at fraction `at` of the file (a bad disk block, a bad copy)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, start + length):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return start


def test_the_scanner_skips_corrupt_and_truncated_records_and_resynchronizes(tmp_path):
    from trainer.data import tfrecords

    (path,) = write_shards(tmp_path, "train", shards=1, per_shard=50)
    size = path.stat().st_size
    damage(path, 0.3, length=4)    # Inside one record's payload: that record only.
    damage(path, 0.6, length=200)  # Across a record boundary: its header too, found again after it.
    path.write_bytes(path.read_bytes()[:size - 30])  # And a truncated last record.
    faults = tfrecords.scan(str(path))
    reasons = [reason for _, _, reason in faults.corrupt]
    assert reasons[0] == "corrupt record (data checksum mismatch)"
    assert any(r.startswith("corrupt record header") for r in reasons)
    assert reasons[-1].startswith("truncated record")
    assert 50 - 6 <= faults.records <= 50 - 3  # Everything else is still read.
    # A file that is no TFRecord at all cannot be read: an error naming it.
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"\x89PNG" + bytes(range(256)) * 4)
    with pytest.raises(Exception, match=f"TFRecord shard {junk} holds no readable record"):
        tfrecords.scan(str(junk))


def test_corrupt_shards_are_skipped_counted_or_refused_when_scanned_up_front(tmp_path):
    from trainer.data import sources as data_lib
    from trainer.config import Config
    from trainer.errors import UsageError

    shards = write_shards(tmp_path / "records", "train")
    clean = data_lib.load(Config(data=str(tmp_path / "records" / "train-*"), validation_split=0.25))
    offset = damage(shards[1], 0.5, length=8)
    dataset = data_lib.load(Config(data=str(tmp_path / "records" / "train-*"), validation_split=0.25))
    assert len(dataset.train) + len(dataset.validation) == len(clean.train) + len(clean.validation) - 1
    from trainer.data import record_faults

    (entry,) = record_faults.skipped(dataset)
    assert entry["shard"] == str(shards[1]) and entry["offset"] <= offset and entry["index"] >= 0
    with pytest.raises(UsageError, match=r"1 of 80 records are corrupt or truncated, more than "
                                         r"--max_bad_fraction=0.01; first: .*train-00001-of-00002.tfrecord at byte"):
        data_lib.load(Config(data=str(tmp_path / "records2" / "train-*"), max_bad_fraction=0.01)
                      if write_shards(tmp_path / "records2", "train") and damage(
                          tmp_path / "records2" / "train-00001-of-00002.tfrecord", 0.5, 8) else None)
    junk = tmp_path / "records" / "train-00002-of-00002.tfrecord"
    junk.write_bytes(b"definitely not a TFRecord file, but long enough to look like one")
    with pytest.raises(UsageError, match=f"TFRecord shard {junk} holds no readable record"):
        data_lib.load(Config(data=str(tmp_path / "records" / "train-*")))


def test_bad_records_met_mid_training_are_skipped_counted_and_the_run_completes(capsys, tmp_path):
    # --labels_file: nothing is scanned up front, so training itself meets the corrupt record (and evaluation the
    # undecodable one), which used to end the run with DataLossError on every restart.
    train = write_shards(tmp_path / "records", "train", shards=2, per_shard=60)
    write_shards(tmp_path / "records", "validation", shards=1, per_shard=20, bad_image_at={(0, 7)})
    damage(train[0], 0.5)
    records = tmp_path / "records"
    args = [f"--data={records / 'train-*'}", f"--eval_data={records / 'validation-*'}",
            f"--labels_file={records / 'labels.txt'}", "--backbone=small_cnn", "--image_size=12", "--batch_size=8",
            "--train_steps=40", "--save_checkpoints_steps=20", "--eval_throttle_secs=0",
            f"--model_dir={tmp_path / 'run'}"]
    status, errors, err = cli(capsys, *args, whole_stderr=True)
    assert status == 0 and not errors
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    skipped = info["skipped_records"]
    corrupt = [s for s in skipped if "offset" in s]
    assert corrupt and all(s["shard"] == str(train[0]) for s in corrupt), skipped
    assert {"shard": str(records / "validation-00000-of-00001.tfrecord"), "index": 7,
            "reason": "image bytes do not decode (or not a tf.train.Example)"} in skipped
    served = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
    assert served.get("last_evaluation", served)["global_step"] == 40
    # Restarted (as Vertex AI re-runs a job), the run knows them without searching again, and still reports them.
    assert "a bad record stopped training" in err  # A warning: on the console.
    status, errors, err = cli(capsys, *[a if a != "--train_steps=40" else "--train_steps=50" for a in args],
                              whole_stderr=True)
    assert status == 0 and not errors and "a bad record stopped training" not in err
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["skipped_records"] == skipped
    # Too many bad records for --max_bad_fraction: one error line naming the fraction and the first shard.
    status, errors = cli(capsys, *args[:-1], f"--model_dir={tmp_path / 'run2'}", "--max_bad_fraction=0.005")
    assert status == 1 and len(errors) == 1 and "more than --max_bad_fraction=0.005" in errors[0], errors


# --- A worker killed in a multi-worker run --------------------------------------------------------------------------


@pytest.mark.slow  # Multi-process kill: make test-slow.
def test_a_killed_worker_is_named_in_one_line_and_the_same_command_resumes(tmp_path):
    model_dir, logs = tmp_path / "mw", tmp_path / "logs"
    command = [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--evaluator", f"--log_dir={logs}",
               "--grace_secs=3", "--timeout=240", "--", "--data=digits", "--backbone=mlp", f"--model_dir={model_dir}",
               # Checkpoints kept: a lagging evaluator must not be handed one the chief already deleted.
               "--train_steps=400", "--save_checkpoints_steps=20", "--keep_checkpoint_max=50",
               "--eval_throttle_secs=1"]  # 0 makes the evaluator spin, which slows every task.
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = proc.stderr.readline()
    assert started.startswith("launch_local: started chief (pid ") and str(logs) in started, started
    worker_pid = int(started.split("worker0 (pid ")[1].split(")")[0])
    deadline = time.time() + 200
    while not (model_dir / "model.ckpt-20.index").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the cluster must still be training"
    os.kill(worker_pid, signal.SIGKILL)  # Mid-training.
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL
    after = err[err.index("launch_local: task worker0"):].splitlines()
    assert after[0] == ("launch_local: task worker0 was killed by signal 9 (SIGKILL); stopping the others "
                        "(exit status 137)")
    # The survivors' dying noise is summarised, one line each; their full logs stay in the files.
    assert len(after) == 3 and "Traceback" not in "\n".join(after), after
    for name, line in zip(("chief", "evaluator"), after[1:]):
        assert line.startswith(f"launch_local: stopped {name} (") and line.endswith(f"in {logs / name}.log"), line
    assert {p.name for p in logs.iterdir()} == {"chief.log", "worker0.log", "evaluator.log"}
    assert "Saving checkpoints for 20" in (model_dir / "train.log").read_text()  # The chief's full log.
    # The same command again resumes from the latest checkpoint and finishes.
    resumed_from = int((model_dir / "checkpoint").read_text().split("model.ckpt-")[1].split('"')[0])
    assert 20 <= resumed_from < 400
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["global_step"] == 400
    assert "[chief] " in again.stderr and f"Restoring parameters from {model_dir}/model.ckpt-{resumed_from}" in \
        (model_dir / "train.log").read_text().split("===== run started")[-1]



@pytest.mark.slow  # Multi-process kill: make test-slow.
def test_after_a_worker_died_the_chief_still_ends_on_sigterm(tmp_path):
    """SRE trial W7: with a worker gone, the chief waits in a collective op where a Python signal handler never
    runs, so SIGTERM did nothing until the SIGKILL that follows it (here: launch_local's, after its grace)."""
    model_dir, logs = tmp_path / "mw", tmp_path / "logs"
    command = [sys.executable, "-m", "trainer.launch_local", "--workers=1", f"--log_dir={logs}", "--grace_secs=60",
               "--timeout=240", "--", "--data=digits", "--backbone=mlp", f"--model_dir={model_dir}",
               "--train_steps=20000", "--save_checkpoints_steps=20"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TRAINER_SIGTERM_GRACE_SECS="3"))
    started = proc.stderr.readline()
    worker_pid = int(started.split("worker0 (pid ")[1].split(")")[0])
    deadline = time.time() + 200
    while not (model_dir / "model.ckpt-20.index").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the cluster must still be training"
    os.kill(worker_pid, signal.SIGKILL)  # launch_local then sends the chief SIGTERM.
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    waited = time.time() - killed
    stopped = [line for line in err.splitlines() if line.startswith("launch_local: stopped chief (")]
    assert stopped and stopped[0].startswith("launch_local: stopped chief (status 143)"), err[-3000:]
    assert waited < 40, waited  # Well before launch_local's 60 s SIGKILL.
    said = "error: SIGTERM received 3 s ago, but TensorFlow still holds the main thread"
    assert said in (logs / "chief.log").read_text() and said in (model_dir / "train.log").read_text()


def test_a_cloud_storage_failure_mid_run_is_one_line():
    import tensorflow as tf

    from trainer.stages import preflight

    with pytest.raises(tf.errors.OpError) as raised:  # What an export or checkpoint write meets without network.
        with tf.io.gfile.GFile("gs://nobucket/run/export/saved_model.pb", "w") as f:
            f.write("x")
    message = preflight.storage_failure(raised.value)
    assert message.startswith("gs://nobucket/run/export/saved_model.pb: TensorFlow cannot reach Cloud Storage ("), \
        message
    assert preflight.storage_failure(tf.errors.NotFoundError(None, None, "/local/file not found")) is None
    assert preflight.storage_failure(ValueError("gs://x")) is None


def test_the_up_front_stat_needs_only_object_permissions():
    from trainer.stages import preflight
    from trainer.config import Config

    paths = dict(preflight._paths(Config(data="gs://b/records/train-*", eval_data="gs://b/val-*", model_dir="/local")))
    assert paths == {"data": "gs://b/records", "eval_data": "gs://b"}
    assert preflight._probe("gs://b") == preflight._probe("gs://b/") == "gs://b/.trainer-preflight"
    assert preflight._probe("gs://b/runs/x") == "gs://b/runs/x"
