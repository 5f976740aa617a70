"""The console holds the run's own lines only (new-user trial 2026-12-04 UX): TensorFlow 2.21's C++ start-up log
(`I0000 ... port.cc`, `failed call to cuInit`, absl's `All log messages before absl::InitializeLog()`) and TFLite's
converter and interpreter chatter went to the console; they stay in train.log. Run as users do: without
TF_CPP_MIN_LOG_LEVEL, from a working folder of their own."""
import os
import subprocess
import sys

from conftest import REPO

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
