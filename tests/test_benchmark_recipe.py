"""scripts/benchmark_recipe.py end to end at a tenth of its steps: the trunk, two variants on one seed, a table row
per variant and a JSON row per run with the plain and TTA figures."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.tf221]


def test_the_recipe_benchmark_runs_and_writes_its_rows(tmp_path):
    output = tmp_path / "recipe.json"
    proc = subprocess.run([sys.executable, "scripts/benchmark_recipe.py", "--seeds=1", "--steps_scale=0.1",
                           "--variants=recipe,recipe+mixup", f"--out={tmp_path / 'runs'}", f"--json={output}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(output.read_text())["rows"]
    assert [(r["variant"], r["seed"]) for r in rows] == [("recipe", 1), ("recipe+mixup", 1)]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["nll"] > 0 and 0 <= row["tta_accuracy"] <= 1 and row["seconds"] > 0
    assert "--train_steps=15" in rows[1]["flags"] and "--augment=mixup:0.2" in rows[1]["flags"]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| recipe")]
    assert len(table) == 2 and "`--augment=mixup:0.2`" in table[1]
    bad = subprocess.run([sys.executable, "scripts/benchmark_recipe.py", "--variants=recipe+nothing"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error: unknown variants")
