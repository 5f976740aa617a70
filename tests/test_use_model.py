"""Using a trained model: batch prediction, TFLite export, Vertex AI Model Registry (dry run).

One tiny small_cnn is trained once (through the real entry point, with --export_tflite=int8)
on generated images and reused by every test; a second tiny model on digits covers
float-input SavedModels.
"""
import csv
import json
import re
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from conftest import REPO, make_image_folder
from trainer import export_tflite, predict, task
from trainer.outputs import tflite
from trainer.retrain import champion_store as champion
from trainer.data import sources as data
from trainer.stages import experiment
from trainer.data import inputs
from trainer.config import Config

CLASSES = ("cats", "dogs", "fish")
SIZE = 32  # small_cnn on a folder: the images are resized to 32x32.


def train_cli(*args) -> None:
    """The trainer's real entry point (flags -> Config -> experiment), in-process."""
    flags.FLAGS.unparse_flags()
    task.main(task._parse_flags(["trainer", *args]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("use")
    images = make_image_folder(root / "images", classes=CLASSES, per_class=20, size=16)
    model_dir = root / "run"
    train_cli(f"--data={images}", "--backbone=small_cnn", f"--model_dir={model_dir}", "--train_steps=30",
              "--batch_size=16", "--save_checkpoints_steps=30", "--eval_throttle_secs=0", "--export_tflite=int8")
    info = json.loads((model_dir / "run_info.json").read_text())
    return {"root": root, "images": images, "model_dir": model_dir, "export": info["export"]}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("digits") / "run"
    summary = experiment.train_and_evaluate(Config(data="digits", backbone="mlp", model_dir=str(model_dir),
                                                   train_steps=30, save_checkpoints_steps=30, eval_throttle_secs=0))
    return model_dir, summary["export"]


def serving_probabilities(export_dir, paths):
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    encoded = [open(p, "rb").read() for p in paths]
    return fn(image_bytes=tf.constant(encoded))["probabilities"].numpy()


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- Batch prediction ---------------------------------------------------------------------------------------

def test_predict_folder_equals_the_serving_signature_and_the_keras_model(run, tmp_path, capsys):
    data_dir = tmp_path / "new"
    shutil.copytree(run["images"], data_dir)
    (data_dir / "cats" / "deeper" / "more").mkdir(parents=True)  # Any depth below the class folder.
    shutil.copy(data_dir / "cats" / "cats_1.jpg", data_dir / "cats" / "deeper" / "more" / "x.jpg")
    (data_dir / "dogs" / "broken.jpg").write_bytes(b"not an image")
    (data_dir / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    output = tmp_path / "out" / "predictions.csv"
    os.makedirs(output.parent)

    assert predict.main([f"--model={run['model_dir']}", f"--data={data_dir}", f"--output={output}",
                         "--batch_size=8"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    table = rows(output)
    assert len(table) == 3 * 20 + 2 == summary["inputs"] and summary["errors"] == 1
    assert list(table[0]) == ["path", "predicted", "probability", "top_k", "error"]
    broken = [r for r in table if r["path"].endswith("broken.jpg")]
    assert broken[0]["predicted"] == "" and "Unknown image file format" in broken[0]["error"]
    good = [r for r in table if not r["error"]]
    # Exactly what the serving signature (an endpoint) returns for the same bytes.
    expected = serving_probabilities(run["export"], [r["path"] for r in good])
    for row, probabilities in zip(good, expected):
        top = json.loads(row["top_k"])
        assert [name for name, _ in top] == [CLASSES[i] for i in np.argsort(-probabilities)[:3]]
        np.testing.assert_allclose([p for _, p in top], np.sort(probabilities)[::-1][:3], rtol=1e-6)
        assert row["predicted"] == top[0][0] and float(row["probability"]) == top[0][1]
    # And what the trained Keras model gives on the training pipeline's decoding.
    keras = tf.keras.models.load_model(run["model_dir"] / "keras_model.h5", compile=False)
    pixels = np.stack([inputs.decode_image(open(r["path"], "rb").read(), SIZE).numpy() for r in good])
    np.testing.assert_allclose(keras.predict(pixels, verbose=0), expected, atol=1e-5)
    # Class folders named like the classes: accuracy and the confusion matrix next to the output.
    correct = sum(r["predicted"] == Path(r["path"]).relative_to(data_dir).parts[0] for r in good)
    assert summary["accuracy"] == pytest.approx(correct / len(good)) and summary["accuracy"] > 0.9
    assert f"accuracy {summary['accuracy']:.4f} on {len(good)} labelled inputs" in captured.err
    assert "inputs/s" in captured.err and summary["inputs_per_second"] > 0
    matrix = rows(output.parent / "predictions.confusion.csv")
    assert [m["true \\ predicted"] for m in matrix] == list(CLASSES)
    assert sum(int(m[c]) for m in matrix for c in CLASSES) == len(good)
    assert not [f for f in os.listdir(output.parent) if ".tmp-" in f]


def test_predict_globs_npz_tfrecords_and_the_champion(run, tmp_path, capsys):
    images = run["images"]
    pngs = sorted(images.glob("*/*.png"))
    # A file glob, JSON lines, --top_k larger than the class count; labels from the parent folder.
    out = tmp_path / "glob.jsonl"
    assert predict.main([f"--model={run['export']}", f"--data={images}/*/*.png", f"--output={out}",
                         "--top_k=5"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in pngs]
    assert all(len(line["top_k"]) == 3 and line["error"] is None for line in lines)
    by_path = {line["path"]: line for line in lines}
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # A glob of class folders: their images, labelled by the folder.
    assert predict.main([f"--model={run['export']}", f"--data={images}/*", f"--output={tmp_path / 'dirs.csv'}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] == 60 and summary["accuracy"] > 0.9

    # .npz arrays for an image-bytes model: encoded losslessly, so the same predictions as the PNG files.
    x = np.stack([np.asarray(Image.open(p)) for p in pngs])
    y = np.array([CLASSES.index(p.parent.name) for p in pngs])
    np.savez(tmp_path / "new.npz", x=x, y=y)
    out = tmp_path / "npz.csv"
    assert predict.main([f"--model={run['model_dir']}", f"--data={tmp_path / 'new.npz'}", f"--output={out}"]) == 0
    table = rows(out)
    assert [int(r["index"]) for r in table] == list(range(len(pngs)))
    for r, p in zip(table, pngs):
        assert r["predicted"] == by_path[str(p)]["predicted"]
        assert float(r["probability"]) == pytest.approx(by_path[str(p)]["probability"], abs=1e-6)
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # TFRecords in the trainer's schema (class text), and a shard that is not TFRecords at all.
    from trainer.data import tfrecords

    shard = tmp_path / "new-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as w:
        for p in pngs:
            w.write(tfrecords.encode_example(p.read_bytes(), CLASSES.index(p.parent.name), p.parent.name))
    (tmp_path / "junk-00000-of-00001.tfrecord").write_bytes(b"\x00" * 40)
    out = tmp_path / "tfr.csv"
    assert predict.main([f"--model={run['model_dir']}", f"--data={tmp_path}/*.tfrecord", f"--output={out}"]) == 0
    table = rows(out)
    assert len(table) == 1 + len(pngs) and table[0]["error"].startswith("corrupt record")  # junk-* sorts first.
    assert table[1]["path"] == f"{shard}:0"
    assert [r["predicted"] for r in table[1:]] == [by_path[str(p)]["predicted"] for p in pngs]
    # 40 bytes flipped mid-shard (trial c176): one error row, every other record still predicted (was: the rest of
    # the shard dropped, the count wrong, raw TensorFlow text in the error cell).
    raw = bytearray(shard.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 40] = bytes(b ^ 0xFF for b in raw[middle:middle + 40])
    damaged = tmp_path / "damaged" / "d-00000-of-00001.tfrecord"
    damaged.parent.mkdir()
    damaged.write_bytes(bytes(raw))
    assert predict.main([f"--model={run['model_dir']}", f"--data={damaged}", f"--output={out}"]) == 0
    table = rows(out)
    errors = [r for r in table if r["error"]]
    assert len(errors) == 1 and errors[0]["error"].startswith("corrupt record") and "{{" not in errors[0]["error"]
    assert len(table) - 1 == len(pngs) - 1  # Only the damaged record is lost.
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] == len(table) and summary["errors"] == 1

    # --champion_dir: the version CHAMPION.json names.
    champion_dir = tmp_path / "champion"
    store = champion.open_store(str(champion_dir))
    assert champion.promote(store, None, "v1", run["export"], str(run["model_dir"] / "keras_model.h5"),
                            {"accuracy": 1.0}, "test", None)
    out = tmp_path / "champion.jsonl"
    assert predict.main([f"--champion_dir={champion_dir}", f"--data={images}/cats/*.png", f"--output={out}"]) == 0
    assert [json.loads(line)["predicted"] for line in out.read_text().splitlines()] == \
        [by_path[str(p)]["predicted"] for p in pngs if p.parent.name == "cats"]
    assert predict.main([f"--model={champion_dir / 'v1'}", f"--data={images}/cats/*.png", f"--output={out}"]) == 0


def test_predict_with_a_float_input_model(digits_run, tmp_path, capsys):
    model_dir, export = digits_run
    dataset = data.load(Config(data="digits"))
    x, y = dataset.validation.x["x"][:50], dataset.validation.labels[:50]
    np.savez(tmp_path / "digits.npz", x_test=x[..., 0], y_test=y)  # Stored without a channel axis.
    out = tmp_path / "digits.csv"
    assert predict.main([f"--model={model_dir}", f"--data={tmp_path / 'digits.npz'}", f"--output={out}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fn = tf.saved_model.load(export).signatures["serving_default"]
    (name,) = fn.structured_input_signature[1]
    expected = fn(**{name: inputs.to_model_images(tf.constant(x), 8)})["probabilities"].numpy()
    table = rows(out)
    assert [r["predicted"] for r in table] == [str(i) for i in expected.argmax(-1)]
    np.testing.assert_allclose([float(r["probability"]) for r in table], expected.max(-1), rtol=1e-6)
    assert summary["accuracy"] == pytest.approx(np.mean(expected.argmax(-1) == y))
    # A folder of image files for the same float-input model: decoded and resized in the reader threads.
    folder = tmp_path / "digit_images" / "7"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(x[i, ..., 0].astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "digit_images.csv"
    assert predict.main([f"--model={model_dir}", f"--data={folder.parent}", f"--output={out}"]) == 0
    assert len(rows(out)) == 3 and not any(r["error"] for r in rows(out))


@pytest.mark.parametrize("args, fragment", [
    (["--output=out.txt"], "--output=out.txt must end in .csv or .jsonl"),
    (["--top_k=0"], "--top_k=0 must be at least 1"),
    (["--data=/no/such/*.jpg"], "matches no files"),
    (["--model=/no/such/model"], "--model=/no/such/model does not exist"),
    (["--model={tmp}"], "holds no SavedModel"),
    (["--model={tmp}", "--champion_dir={tmp}"], "give one of --model and --champion_dir"),
    (["--batch_size=x"], "invalid int value"),
])
def test_predict_usage_errors(run, tmp_path, capsys, args, fragment):
    defaults = {"--model": f"--model={run['model_dir']}", "--data": f"--data={run['images']}",
                "--output": f"--output={tmp_path / 'o.csv'}"}
    args = [a.format(tmp=tmp_path) for a in args]
    for flag, value in defaults.items():
        if not any(a.startswith(flag + "=") for a in args) and not (flag == "--model" and any(
                a.startswith("--champion_dir") for a in args)):
            args.append(value)
    try:
        status = predict.main(args)
    except SystemExit as e:  # argparse's own checks (types).
        status = e.code
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and fragment in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_predict_cli_reads_a_gcs_model_and_writes_gcs_output(run, gcs_server, tmp_path):
    _, client = gcs_server
    bucket = client.bucket("test-bucket")
    for path in Path(run["export"]).rglob("*"):
        if path.is_file():
            bucket.blob(f"runs/r1/export/best/1/{path.relative_to(run['export'])}").upload_from_filename(str(path))
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.predict", "--model=gs://test-bucket/runs/r1", f"--data={run['images']}",
         "--output=gs://test-bucket/predictions/out.jsonl"], cwd=REPO, capture_output=True, text=True,
        timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == 60 and summary["errors"] == 0 and summary["accuracy"] > 0.9
    assert "inputs/s" in proc.stderr
    lines = bucket.blob("predictions/out.jsonl").download_as_text().splitlines()
    assert len(lines) == 60 and json.loads(lines[0])["predicted"] in CLASSES
    assert bucket.blob("predictions/out.confusion.csv").exists()
    cached = Path(os.environ["TRAINER_CACHE_DIR"]) / "gcs" / "test-bucket" / "runs" / "r1" / "export" / "best" / "1"
    assert (cached / "saved_model.pb").exists() and not list(cached.parent.glob("*.part-*"))


# ---- TFLite -------------------------------------------------------------------------------------------------

def tflite_vs_saved_model(run, model_dir) -> float:
    """Top-1 agreement of export/tflite/model.tflite with the SavedModel on the evaluation split."""
    paths = data.load(Config(data=str(run["images"]))).validation.paths
    reference = serving_probabilities(run["export"], paths).argmax(-1)
    runner = tflite.Runner((model_dir / "export" / "tflite" / "model.tflite").read_bytes())
    lite = [runner(inputs.decode_image(open(p, "rb").read(), SIZE).numpy()).argmax() for p in paths]
    return float(np.mean(reference == np.array(lite)))


def test_export_tflite_flag_writes_an_int8_model(run):
    out = run["model_dir"] / "export" / "tflite"
    assert (out / "labels.txt").read_text().splitlines() == list(CLASSES)
    info = json.loads((out / "model_info.json").read_text())
    assert info["quantize"] == "int8" and info["calibration_examples"] > 0
    assert info["input"]["dtype"] == "uint8" and info["input"]["shape"] == [1, SIZE, SIZE, 3]
    assert info["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}  # Decoded pixels go in as they are.
    assert info["output"]["dtype"] == "uint8" and info["output"]["quantization"]["scale"] == pytest.approx(1 / 256)
    import hashlib
    assert info["sha256"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    run_info = json.loads((run["model_dir"] / "run_info.json").read_text())
    assert run_info["tflite"]["quantize"] == "int8" and run_info["tflite"]["bytes"] == info["bytes"]
    assert tflite_vs_saved_model(run, run["model_dir"]) >= 0.97
    # Trial c067: the closing lines named every output but the .tflite.
    import logging

    from trainer.util import console

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    absl_logger, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        console.summary_block({"model_dir": str(run["model_dir"]), "global_step": 30}, 1.0, None, None)
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    assert any(re.fullmatch(r"\s*tflite:\s+" + re.escape(str(out / "model.tflite")), r) for r in records), records


def test_export_tflite_float_modes_agree_with_the_saved_model(run, tmp_path, capsys):
    model_dir = tmp_path / "run"
    shutil.copytree(run["model_dir"], model_dir)
    # keras_model.h5 holds the final checkpoint, the served SavedModel may hold an earlier (best) one: the
    # .tflite must take the SavedModel's weights. Make the two differ for sure.
    keras = tf.keras.models.load_model(model_dir / "keras_model.h5", compile=False)
    kernel = keras.get_layer("probabilities").kernel
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype(np.float32))
    keras.save(model_dir / "keras_model.h5", include_optimizer=False)
    sizes = {}
    for mode in ("float32", "float16"):
        assert export_tflite.main([str(model_dir), f"--quantize={mode}"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        info = json.loads((model_dir / "export" / "tflite" / "model_info.json").read_text())
        assert info["quantize"] == mode and info["input"]["dtype"] == "float32"
        assert info["weights"] == str(model_dir / "export" / "best" / os.path.basename(run["export"]))
        assert summary["agreement"] == info["agreement_with_keras_model"]["top1"] >= 0.99
        assert tflite_vs_saved_model(run, model_dir) >= 0.99
        sizes[mode] = info["bytes"]
    assert sizes["float16"] < sizes["float32"]
    assert export_tflite.main([str(model_dir), "--quantize=int4"]) == 1
    assert "--quantize=int4 is not valid" in capsys.readouterr().err
    assert export_tflite.main([str(tmp_path)]) == 1
    assert "holds no finished run" in capsys.readouterr().err


def test_a_killed_tflite_export_is_redone_by_the_same_command(run, tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(run["model_dir"], model_dir)
    shutil.rmtree(model_dir / "export" / "tflite")
    command = [sys.executable, "-m", "trainer.export_tflite", str(model_dir), "--quantize=int8"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "tflite: converting" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the export must have reached the conversion"
    out = model_dir / "export" / "tflite"
    assert not (out / "model.tflite").exists() and not (out / "model_info.json").exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tflite.tmp-deadbeef").write_bytes(b"half a model")  # As a kill during the write leaves it.
    assert export_tflite.main([str(model_dir), "--quantize=int8"]) == 0
    assert sorted(os.listdir(out)) == ["labels.txt", "model.tflite", "model_info.json"]
    assert tflite_vs_saved_model(run, model_dir) >= 0.97


def test_tflite_of_a_binary_model_and_of_a_model_fn_run(tmp_path, capsys):
    """Trial c137/c138 (every binary model failed: "probabilities" used twice) and c068/c072/c073 (a --model_fn
    run, which the --export_tflite error line sends to trainer.export_tflite, crashed in the agreement check)."""
    binary = tmp_path / "binary"
    train_cli("--data=digits", "--classes=3,8", "--label_mode=binary", "--backbone=small_cnn", "--train_steps=20",
              f"--model_dir={binary}", "--export_tflite=int8")
    info = json.loads((binary / "export" / "tflite" / "model_info.json").read_text())
    assert info["output"]["shape"][-1] == 2 and info["agreement_with_keras_model"]["top1"] >= 0.9
    own = tmp_path / "own"
    experiment.train_and_evaluate(Config(data="digits", model_fn="tiny_models:gray", model_dir=str(own),
                                         train_steps=5))
    capsys.readouterr()
    assert export_tflite.main([str(own), "--quantize=float16"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "takes a model of RGB images" in err and "Traceback" not in err


# ---- Model Registry -----------------------------------------------------------------------------------------

def register_main(*args) -> int:
    sys.path.insert(0, str(REPO / "scripts"))
    import register_model

    return register_model.main(["--project=proj", "--region=us-central1", *args])


def test_register_dry_run_prints_a_model_and_the_upload_request(run, capsys):
    from google.cloud import aiplatform_v1

    assert register_main(f"--artifact_uri={run['export']}", "--display_name=pets", "--parent_model=123",
                         "--version_aliases=champion,candidate", "--labels=team=vision,data=v2", "--dry_run") == 0
    proc = capsys.readouterr()
    model = aiplatform_v1.Model.from_json(proc.out)
    assert model.display_name == "pets" and model.artifact_uri == run["export"]
    assert model.container_spec.image_uri == "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    assert list(model.version_aliases) == ["champion", "candidate"]
    assert dict(model.labels) == {"team": "vision", "data": "v2"}
    metrics = json.loads((run["model_dir"] / "eval_metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.4f}" in model.description and "global_step 30" in model.description
    head, _, body = proc.err.partition("request: POST ")
    url, _, request_json = body.partition("\n")
    assert url == "https://us-central1-aiplatform.googleapis.com/v1/projects/proj/locations/us-central1/models:upload"
    request = aiplatform_v1.UploadModelRequest.from_json(request_json)
    assert request.parent_model == "projects/proj/locations/us-central1/models/123"
    assert request.parent == "projects/proj/locations/us-central1" and request.model == model


@pytest.mark.parametrize("args, fragment", [
    (["--artifact_uri={export}"], "must be a gs:// URI"),
    (["--artifact_uri={model_dir}", "--dry_run"], "has no saved_model.pb"),
    (["--artifact_uri={export}", "--labels=Team=x", "--dry_run"], "--labels: 'Team=x'"),
    (["--artifact_uri={export}", "--version_aliases=default", "--dry_run"], "--version_aliases: 'default'"),
    (["--artifact_uri={export}", "--parent_model=projects/other/locations/eu/models/1", "--dry_run"],
     "is not in --project=proj"),
])
def test_register_bad_combinations(run, capsys, args, fragment):
    args = [a.format(export=run["export"], model_dir=run["model_dir"]) for a in args]
    assert register_main("--display_name=x", *args) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and fragment in captured.err


def test_register_checks_the_gcs_artifact_before_uploading(gcs_server, capsys):
    assert register_main("--display_name=x", "--artifact_uri=gs://test-bucket/champions/pets/v1/model") == 1
    assert "error: --artifact_uri=gs://test-bucket/champions/pets/v1/model has no saved_model.pb" in \
        capsys.readouterr().err
    assert register_main("--display_name=x", "--artifact_uri=gs://no-such-bucket/m") == 1
    assert "error: --artifact_uri: no such bucket 'no-such-bucket'" in capsys.readouterr().err


def test_predict_and_report_refuse_unwritable_outputs_first(run, tmp_path, capsys):
    """Trial c055/c059/c060/c172: tracebacks (one of them after the whole prediction ran)."""
    from trainer import report

    (tmp_path / "isdir.csv").mkdir()
    (tmp_path / "plain_file").write_text("x")
    for output, fragment in ((tmp_path / "isdir.csv", "is a folder"),
                             (tmp_path / "plain_file" / "out.csv", "is a file, not a folder"),
                             ("/proc/nope/out.csv", "cannot create the folder")):
        status = predict.main([f"--model={run['model_dir']}", f"--data={run['images']}", f"--output={output}"])
        err = capsys.readouterr().err
        assert status == 1 and err.startswith("error:") and fragment in err and err.count("\n") == 1, err
    assert report.main([str(run["model_dir"]), "--output=/proc/nope/r.html"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "cannot create the folder" in err and "Traceback" not in err


def test_retrain_registers_a_promoted_run(run, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PROJECT="proj", REGION="europe-west4", PARENT_MODEL="77",
               REGISTER_DRY_RUN="1", SERVING_IMAGE="europe-west4-docker.pkg.dev/proj/trainer/serve:7")
    proc = subprocess.run(
        ["bash", "scripts/retrain.sh", f"--data={run['images']}", "--backbone=small_cnn", "--train_steps=10",
         "--batch_size=16", "--eval_throttle_secs=0", f"--model_dir={tmp_path / 'retrain'}",
         "--champion_dir", str(tmp_path / "champion")],  # absl's space-separated form (trial c151).
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary_line, _, model_json = proc.stdout.partition("\n")
    summary = json.loads(summary_line)
    pointer = json.loads((tmp_path / "champion" / "CHAMPION.json").read_text())
    assert pointer["source_run"] == summary["model_dir"]
    from google.cloud import aiplatform_v1

    model = aiplatform_v1.Model.from_json(model_json)
    assert model.artifact_uri == f"{tmp_path / 'champion'}/{pointer['version']}/model"
    assert list(model.version_aliases) == ["champion"] and model.display_name == "champion"
    assert model.container_spec.image_uri == env["SERVING_IMAGE"] and model.container_spec.predict_route == "/predict"
    assert "projects/proj/locations/europe-west4/models/77" in proc.stderr


def test_export_tflite_config_checks():
    from trainer.config import validate
    from trainer.errors import UsageError

    with pytest.raises(UsageError, match="--export_tflite=int4 is not valid; choose one of: none, float32"):
        validate(Config(data="digits", export_tflite="int4"))
    with pytest.raises(UsageError, match="--export_tflite applies to the built-in models"):
        validate(Config(data="digits", export_tflite="int8", model_fn="multi_io_model:build"))
    assert validate(Config(data="digits", export_tflite="float16")).export_tflite == "float16"
