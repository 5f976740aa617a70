"""The command-line contract, through real subprocesses."""
import json

import pytest

from conftest import last_json, run_cli

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.


def assert_one_error_line(proc, *fragments):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
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
