"""`make demo`'s script, end to end: the digits transfer story must reach 0.98 on 0-vs-1."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_demo_reaches_098_on_zero_vs_one(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] >= 0.98 and summary["global_step"] == 200
    info = json.loads((tmp_path / "demo" / "zero_vs_one" / "run_info.json").read_text())
    assert info["class_names"] == ["0", "1"]
    assert json.loads((tmp_path / "demo" / "base_summary.json").read_text())["accuracy"] > 0.9
