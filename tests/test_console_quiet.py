"""The console holds the run's own lines only (new-user trial 2026-12-04 UX): TensorFlow 2.21's C++ start-up log
(`I0000 ... port.cc`, `failed call to cuInit`, absl's `All log messages before absl::InitializeLog()`) and TFLite's
converter and interpreter chatter went to the console; they stay in train.log. Run as users do: without
TF_CPP_MIN_LOG_LEVEL, from a working folder of their own."""
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

NOISE = ("I0000", "E0000", "W0000", "cuInit", "absl::InitializeLog", "XNNPACK", "fully_quantize", "cuda drivers",
         "SyntaxWarning", "oneDNN")


def test_a_run_with_a_tflite_export_prints_only_its_own_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=small_cnn",
                           "--train_steps=20", "--model_dir=runs/quiet", "--export_tflite=int8"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noisy = [line for line in proc.stderr.splitlines() if any(word in line for word in NOISE)]
    assert not noisy, noisy
    assert proc.stderr.splitlines()[0].startswith("data: digits"), proc.stderr[:500]
    log = (tmp_path / "runs" / "quiet" / "train.log").read_text()
    assert "XNNPACK" in log or "fully_quantize" in log or "port.cc" in log  # Kept where a person can look.


def test_real_cpp_errors_still_reach_the_console_after_the_benign_start_up_lines(tmp_path):
    """The filter hides the start-up lines only: an E or F line of TensorFlow 2.21's absl format (whose seconds field
    holds the epoch seconds before absl's logging starts) after them is shown, and so is plain text."""
    code = r'''
import os, sys
from trainer.util import console
console.install(capture_fd2=True)
for line in ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796411415.161369    4296 port.cc:153] oneDNN custom operations are on.",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.",
             "E0000 00:00:1796411416.170305    4296 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
             "E0000 00:00:1796411417.000001    4296 conv_ops.cc:7] CUDNN_STATUS_INTERNAL_ERROR in a real op",
             "F0000 00:00:1796411418.000001    4296 check.cc:9] Check failed: a real fatal",
             "plain text written to fd 2 by a library"):
    os.write(2, (line + "\n").encode())
console.close()
'''
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    shown = proc.stderr.splitlines()
    assert any("CUDNN_STATUS_INTERNAL_ERROR" in line for line in shown), shown
    assert any("Check failed: a real fatal" in line for line in shown), shown
    assert "plain text written to fd 2 by a library" in shown, shown
    hidden = ("absl::InitializeLog", "oneDNN", "To enable the following")
    assert not [line for line in shown if any(word in line for word in hidden)], shown


def test_imagenet_weights_that_cannot_be_fetched_are_one_line_with_the_reason(tmp_path):
    """New-user trial c001: the line gave the reason as just `(Exception)`. This machine reaches no weights host, as
    a locked-down training VM would not either."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", KERAS_HOME=str(tmp_path / "keras"))
    proc = subprocess.run([sys.executable, "-m", "trainer.task", "--data=digits", "--backbone=mobilenet_v2",
                           "--weights=imagenet", "--image_size=32", "--train_steps=1", "--model_dir=runs/w"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: --weights=imagenet: could not get the ImageNet weights of mobilenet_v2 (")
    assert "(Exception)" not in errors[0] and ": " in errors[0].split("(", 1)[1], errors[0]
