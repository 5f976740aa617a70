"""scripts/benchmark_serve.py end to end at a small size: it trains its model, starts the server twice (requests
merged and not), loads it at two client counts, and writes figures in which every request was answered 200."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.tf221]


def test_the_serving_benchmark_runs_and_every_request_is_answered(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra (.venv-keras)")
    output = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, "scripts/benchmark_serve.py", "--requests=24", "--seconds=30",
                           "--clients=1,4", "--max_batch=8,1", "--images=40", f"--output={output}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(output.read_text())
    runs = figures["runs"]
    assert [(r["max_batch"], r["clients"]) for r in runs] == [(8, 1), (8, 4), (1, 1), (1, 4)]
    for run in runs:
        assert run["requests"] == 24 and run["statuses"] == {"200": 24}, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] and run["requests_per_s"] > 0 and run["peak_rss_mb"] > 100
    assert all(r["instances_per_call"] == 1 for r in runs if r["max_batch"] == 1)
    assert figures["predict_files_per_s"] > 0
