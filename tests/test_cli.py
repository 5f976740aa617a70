"""The command-line contract, through real subprocesses."""
import json
import subprocess
import sys

import pytest

from conftest import last_json, run_cli

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.


def assert_one_error_line(proc, *fragments):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "ERROR::" not in proc.stderr  # absl's own prefix, not ours.
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0]


@pytest.mark.parametrize("args, fragments", [
    ([], ["--data is required"]),
    (["--data=/no/such/folder"], ["--data=/no/such/folder", "does not exist"]),
    (["--data=digits", "--backbone=alexnet"], ["--backbone=alexnet", "mobilenet_v2", "small_cnn"]),
    (["--data=digits", "--batch_size=0"], ["--batch_size=0"]),
    (["--data=digits", "--backbone=mlp", "--cut_layer=fc9"], ["--cut_layer=fc9", "fc1"]),
    (["--flagfile=/no/such/flagfile"], ["/no/such/flagfile"]),
    (["--data=digits", "--label_mode=ordinal"], ["label_mode", "sparse"]),
    (["--data=digits", "--backbone=mlp", "--strategy=horovod"], ["--strategy=horovod", "one_device, mirrored"]),
    (["--data=digits", "--backbone=mlp", "--strategy=tpu"], ["--strategy=tpu needs --tpu"]),
])
def test_user_mistakes_give_one_error_line(tmp_path, args, fragments):
    proc = run_cli(*args, f"--model_dir={tmp_path / 'run'}")
    assert_one_error_line(proc, *fragments)


# The package's tools, each with a mistake a user makes: one `error:` line and exit status 1 (launch_local's was
# argparse's usage block and exit status 2), answered before TensorFlow is imported (3 s: export_tflite and predict
# imported it first).
TOOL_MISTAKES = [
    (["trainer.export_tflite", "no/such/run"], ["no/such/run holds no finished run"]),
    (["trainer.export_tflite", "no/such/run", "--quantize=int4"], ["--quantize=int4", "float16"]),
    (["trainer.export_tflite", "no/such/run", "--check_examples=-1"], ["--check_examples >= 0"]),
    (["trainer.predict", "--model=no/such/run", "--data=.", "--output=out.csv"], ["--model=no/such/run does not exist"]),
    (["trainer.predict", "--champion_dir=no champion", "--data=.", "--output=o.csv"], ["--champion_dir=no champion"]),
    (["trainer.predict", "--model=.", "--data=.", "--output=out.txt"], ["--output=out.txt", ".csv or .jsonl"]),
    (["trainer.predict", "--model=.", "--output=out.csv"], ["--data is required"]),
    (["trainer.predict", "--model=.", "--data=.", "--output=o.csv", "--top_k=0"], ["--top_k=0"]),
    (["trainer.predict", "--model=.", "--data=.", "--output=o.csv", "--tta=hflip"], ["--tta", "'hflip'"]),
    (["trainer.launch_local", "--workers=-1"], ["--workers must be >= 0"]),
    (["trainer.launch_local", "--wokers=1"], ["unrecognized arguments: --wokers=1"]),
    (["trainer.task", "--flagfile=no such flags.txt"], ["Unable to open flagfile", "no such flags.txt"]),
]


@pytest.mark.parametrize("args, fragments", TOOL_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_each_tools_mistake_is_one_error_line_before_tensorflow_is_imported(tmp_path, args, fragments):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert_one_error_line(proc, *fragments)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "trainer" in imported, proc.stderr[-2000:]  # -X importtime did report the imports.
    assert "tensorflow" not in imported, f"{args[0]} imported TensorFlow before answering"


def test_helpfull_lists_the_trainer_flags():
    proc = run_cli("--helpfull")
    assert proc.returncode == 0
    for flag in ("--backbone", "--freeze", "--cut_layer", "--base_model", "--model_fn", "--flagfile"):
        assert flag in proc.stdout


def test_flagfile_dry_run_prints_summary_json(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("--dry_run\n--backbone=small_cnn\n--num_classes=4\n--image_size=16\n"
                        f"--model_dir={tmp_path / 'run'}\n")
    proc = run_cli(f"--flagfile={flagfile}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = last_json(proc.stdout)
    assert summary["dry_run"] is True
    written = json.loads((tmp_path / "run" / "model_summary.json").read_text())
    assert written["total_params"] == summary["total_params"] > 0
    assert not list((tmp_path / "run").glob("model.ckpt*")), "a dry run trains nothing"


def test_bad_tf_config_is_one_error_line(tmp_path):
    proc = run_cli("--data=digits", "--backbone=mlp", f"--model_dir={tmp_path}", env={"TF_CONFIG": "{not json"})
    assert_one_error_line(proc, "TF_CONFIG is not valid JSON")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(_has("kfp"), reason="kfp is installed here (the TF 2.15 venv has none)")
@pytest.mark.parametrize("args", [["compile", "--output=p.yaml"],
                                  ["local", "--pipeline_root=root", "--", "--data=digits"]])
def test_the_pipeline_without_kfp_is_one_error_line_naming_the_extra(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "trainer.pipeline", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert_one_error_line(proc, "the pipeline needs kfp", "pip install 'trainer[pipeline]'")
    assert not list(tmp_path.iterdir()), "nothing written"
