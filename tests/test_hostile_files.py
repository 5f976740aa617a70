"""Files that are not files (issue 23, SRE trial B7/B8/B9): a FIFO named .png hung training and predict forever, a
symlink to /dev/zero named .jpg grew memory without bound, a huge file made predict pass 6 GB. Only regular
files up to --max_image_mb are read; each skip is counted and named."""
import csv
import json
import os
import subprocess
import sys

from conftest import REPO, make_image_folder

import restart_cases


def test_fifo_dev_zero_and_huge_files_are_skipped_by_training_and_predict(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=20)
    os.mkfifo(images / "cats" / "pipe.png")
    os.symlink("/dev/zero", images / "dogs" / "zero.jpg")
    with open(images / "dogs" / "huge.jpg", "wb") as f:  # Sparse: 3 MiB on a 2 MiB limit, no disk used.
        f.truncate(3 * 2**20)
    run = tmp_path / "run"
    proc = subprocess.run(restart_cases._command([f"--data={images}", "--backbone=small_cnn", "--image_size=16",
                                                  "--train_steps=5", "--max_image_mb=2"], run),
                          cwd=REPO, env=restart_cases._env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = json.loads((run / "run_info.json").read_text())["skipped_files"]
    assert sorted(os.path.basename(p) for p in skipped) == ["huge.jpg", "pipe.png", "zero.jpg"]
    assert "not a regular file" in proc.stderr and "above --max_image_mb=2" in proc.stderr
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={run}", f"--data={images}",
                           f"--output={out}", "--max_image_mb=2"], cwd=REPO, env=restart_cases._env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {os.path.basename(r["path"]): r for r in csv.DictReader(open(out))}
    assert len(rows) == 43
    assert "not a regular file" in rows["pipe.png"]["error"] and "not a regular file" in rows["zero.jpg"]["error"]
    assert "above --max_image_mb=2" in rows["huge.jpg"]["error"]
    assert sum(1 for r in rows.values() if not r["error"]) == 40
