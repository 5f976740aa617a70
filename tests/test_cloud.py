"""Cloud Storage (against a real loopback GCS server), Vertex AI conventions, tuning reports."""
import json
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from trainer.stages import experiment
from trainer.cloud import gcs
from trainer.engines.estimator import listeners
from trainer.model import backbones
from trainer.config import Config, to_gcs_uri, validate
from trainer.errors import UsageError

FAST = dict(data="digits", save_checkpoints_steps=20, eval_throttle_secs=0, batch_size=32)


def upload(client, local, name):
    client.bucket("test-bucket").blob(name).upload_from_filename(str(local))
    return f"gs://test-bucket/{name}"


def test_base_model_and_weights_from_gcs_train(gcs_server, tmp_path):
    server, client = gcs_server
    base_dir = tmp_path / "base"
    experiment.train_and_evaluate(Config(backbone="mlp", model_dir=str(base_dir), train_steps=20, **FAST))
    base_uri = upload(client, base_dir / "keras_model.h5", "models/base.h5")
    summary = experiment.train_and_evaluate(Config(
        base_model=base_uri, classes=("0", "1"), model_dir=str(tmp_path / "transfer"), train_steps=20, **FAST))
    assert summary["global_step"] == 20
    cached = os.path.join(os.environ["TRAINER_CACHE_DIR"], "gcs", "test-bucket", "models", "base.h5")
    assert os.path.getsize(cached) == os.path.getsize(base_dir / "keras_model.h5")
    assert not [f for f in os.listdir(os.path.dirname(cached)) if ".part-" in f]

    # --weights=gs://: the trunk starts from (and, frozen, keeps) exactly the uploaded weights.
    tf.keras.backend.clear_session()
    trunk = backbones.BACKBONES["small_cnn"].build((8, 8, 3), None)
    for w in trunk.weights:
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype(np.float32))
    trunk.save_weights(tmp_path / "trunk.h5")
    weights_uri = upload(client, tmp_path / "trunk.h5", "weights/small_cnn.h5")
    run = tmp_path / "weights"
    experiment.train_and_evaluate(Config(backbone="small_cnn", weights=weights_uri, freeze="all",
                                         model_dir=str(run), train_steps=20, **FAST))
    trained = tf.keras.models.load_model(run / "keras_model.h5", compile=False).get_layer("small_cnn")
    for a, b in zip(trunk.weights, trained.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_download_reuses_a_verified_cache_and_replaces_a_corrupt_one(gcs_server, tmp_path):
    _, client = gcs_server
    (tmp_path / "f.h5").write_bytes(b"0123456789" * 1000)
    uri = upload(client, tmp_path / "f.h5", "f.h5")
    local = gcs.download(uri, "base_model")
    assert open(local, "rb").read() == b"0123456789" * 1000
    with open(local, "r+b") as f:  # Same size, wrong bytes: must not be trusted.
        f.write(b"X")
    assert gcs.download(uri, "base_model") == local
    assert open(local, "rb").read() == b"0123456789" * 1000


def test_gcs_errors_are_one_line_usage_errors(gcs_server):
    with pytest.raises(UsageError, match="--base_model=gs://no-such-bucket/m.h5: no such bucket"):
        gcs.download("gs://no-such-bucket/m.h5", "base_model")
    with pytest.raises(UsageError, match="--weights=gs://test-bucket/missing.h5: no such object"):
        gcs.download("gs://test-bucket/missing.h5", "weights")


def test_no_credentials_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setattr(gcs, "_CLIENT", None)
    with pytest.raises(UsageError, match="no Google Cloud credentials"):
        gcs.client()


def test_checkpoints_are_mirrored_during_training(gcs_server, tmp_path):
    _, client = gcs_server
    experiment.train_and_evaluate(Config(backbone="mlp", model_dir=str(tmp_path / "run"), train_steps=40,
                                         sync_checkpoints_to="gs://test-bucket/mirror", **FAST))
    names = {b.name for b in client.list_blobs("test-bucket", prefix="mirror/")}
    for step in (0, 20, 40):
        assert f"mirror/model.ckpt-{step}.index" in names
        assert f"mirror/model.ckpt-{step}.data-00000-of-00001" in names
    state = client.bucket("test-bucket").blob("mirror/checkpoint").download_as_text()
    assert 'model_checkpoint_path: "model.ckpt-40"' in state


def test_checkpoint_sync_survives_a_server_restart(gcs_server, tmp_path):
    server, client = gcs_server
    run = tmp_path / "run"
    experiment.train_and_evaluate(Config(backbone="mlp", model_dir=str(run), train_steps=20, **FAST))
    sync = listeners.CheckpointSync(str(run), "gs://test-bucket/mirror")
    server.stop()  # Mid-operation: the server goes away and comes back 2 s later.
    threading.Timer(2.0, server.start).start()
    started = time.time()
    sync.after_save(None, 20)
    assert time.time() - started >= 1.5, "the upload must have waited for the server"
    names = {b.name for b in client.list_blobs("test-bucket", prefix="mirror/")}
    assert {"mirror/model.ckpt-20.index", "mirror/checkpoint"} <= names
    assert sync.uploaded[-1] == "checkpoint"
    data = client.bucket("test-bucket").blob("mirror/model.ckpt-20.index").download_as_bytes()
    assert data == (run / "model.ckpt-20.index").read_bytes()


def test_hypertune_reports_the_metric_at_each_evaluation(tmp_path, monkeypatch):
    metrics_file = tmp_path / "hp" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metrics_file))
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_TAG", "accuracy")
    experiment.train_and_evaluate(Config(backbone="mlp", model_dir=str(tmp_path / "run"), train_steps=40, **FAST))
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [int(line["global_step"]) for line in lines] == [20, 40]
    final = json.loads((tmp_path / "run" / "eval_metrics.json").read_text())
    assert float(lines[-1]["accuracy"]) == pytest.approx(final["accuracy"])
    # Resumed in another process (a preempted trial): the earlier lines stay (wrappers trial U10: only the
    # rerun's were left); a step evaluated again replaces its line.
    (tmp_path / "run" / "eval" / "processed.json").unlink()  # As if killed during step 40's evaluation.
    code = ("import sys; from trainer.stages import experiment; from trainer.config import Config; "
            f"experiment.train_and_evaluate(Config(backbone='mlp', model_dir={str(tmp_path / 'run')!r}, "
            "train_steps=60, data='digits', save_checkpoints_steps=20, eval_throttle_secs=0, batch_size=32))")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [int(line["global_step"]) for line in lines] == [20, 40, 60]


def test_vertex_output_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("AIP_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", str(tmp_path / "tb"))
    summary = experiment.train_and_evaluate(Config(backbone="mlp", train_steps=20, **FAST))
    assert summary["model_dir"] == str(tmp_path / "model")
    assert (tmp_path / "checkpoints" / "model.ckpt-20.index").exists()
    assert not list((tmp_path / "model").glob("model.ckpt-*"))
    for name in ("keras_model.h5", "eval_metrics.json", "run_info.json", "model_summary.json"):
        assert (tmp_path / "model" / name).exists()
    # The served (calibrated) export, copied into $AIP_MODEL_DIR where Vertex imports it.
    assert summary["export"].startswith(str(tmp_path / "model" / "export" / "calibrated"))
    assert (tmp_path / "model" / "export" / "calibrated" / os.path.basename(summary["export"]) /
            "saved_model.pb").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and list((tmp_path / "tb").glob("eval/events*"))


def test_fuse_paths_become_gs_uris():
    assert to_gcs_uri("/gcs/bucket/runs/1") == "gs://bucket/runs/1"
    assert to_gcs_uri("runs/1") == "runs/1"
    config = validate(Config(data="digits", model_dir="/gcs/b/run"))
    assert config.model_dir == "gs://b/run" and config.checkpoint_dir == "gs://b/run"
    with pytest.raises(UsageError, match="--sync_checkpoints_to=/tmp/x must be a gs:// URI"):
        validate(Config(data="digits", sync_checkpoints_to="/tmp/x"))


def test_download_survives_a_server_restart_and_never_leaves_a_partial_file(gcs_server, tmp_path):
    server, client = gcs_server
    payload = np.random.default_rng(0).bytes(3 << 20)
    (tmp_path / "big.h5").write_bytes(payload)
    uri = upload(client, tmp_path / "big.h5", "big.h5")
    server.stop()
    threading.Timer(2.0, server.start).start()
    local = gcs.download(uri, "weights")
    assert open(local, "rb").read() == payload
    assert [f for f in os.listdir(os.path.dirname(local))] == ["big.h5"]


def test_a_champion_dir_on_a_missing_bucket_is_one_error_line_before_training(gcs_server, tmp_path):
    """SRE trial 2026-12-04 B4: it trained to the end, then two tracebacks, on every rerun. The loopback server
    answers 404 for an unknown bucket as Cloud Storage does."""
    config = Config(backbone="mlp", model_dir=str(tmp_path / "run"), train_steps=20,
                    champion_dir="gs://no-such-bucket/champions/c", **FAST)
    with pytest.raises(UsageError, match=r"^--champion_dir=gs://no-such-bucket/champions/c: no such bucket "
                                         r"gs://no-such-bucket \(promotion could not"):
        experiment.train_and_evaluate(config)
    assert not (tmp_path / "run" / "checkpoint").exists()  # Nothing trained.
    # The bucket that exists, with no champion yet: no error (the first run promotes).
    experiment.train_and_evaluate(Config(backbone="mlp", model_dir=str(tmp_path / "ok"), train_steps=20,
                                         champion_dir="gs://test-bucket/champions/c", **FAST))
    assert (tmp_path / "ok" / "run_info.json").exists()
