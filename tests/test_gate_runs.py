"""The promotion gate on real runs (issue 30): champion and challenger scored on the same evaluation examples, the
challenger promoted only when better beyond chance (McNemar for accuracy, the paired bootstrap for other metrics),
refused when a class's recall falls past --promote_max_class_drop; every decision on one `promotion:` line, in
run_info.json and in the champion's history (`python -m trainer.champion show`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from trainer.config import Config
from trainer.stages import experiment

pytestmark = [pytest.mark.quick, pytest.mark.tf221]

RUN = dict(data="digits", backbone="mlp", eval_throttle_secs=0, save_checkpoints_steps=1000)


def train(tmp_path, name, champion_dir, **kw):
    experiment.train_and_evaluate(Config(model_dir=str(tmp_path / name), champion_dir=champion_dir, **{**RUN, **kw}))
    return json.loads((tmp_path / name / "run_info.json").read_text())["promotion"]


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory):
    """A champion of 150 steps (about 0.95 accuracy on the 360 validation digits)."""
    root = tmp_path_factory.mktemp("gate")
    first = train(root, "first", str(root / "champion"), train_steps=150)
    assert first["promoted"] and first["reason"] == "no champion yet"
    return root, str(root / "champion")


def test_an_equal_challenger_is_not_promoted_on_a_coin_flip(champion_dir):
    root, champions = champion_dir
    record = train(root, "same", champions, train_steps=150, seed=7)  # The same recipe, another seed.
    gate = record["gate"]
    assert gate["test"] == "mcnemar" and gate["n"] == 385 and gate["p_value"] > 0.05
    assert not record["promoted"] and abs(record["challenger"] - record["champion"]) < 0.03
    b, c = gate["discordant"]
    assert record["reason"].startswith(f"challenger accuracy {record['challenger']:.6f}, champion "
                                       f"{record['champion']:.6f}, n=385; McNemar exact test: p=")
    assert f"on {b + c} discordant examples (challenger alone right {b}, champion alone right {c})" in record["reason"]
    assert "not better beyond chance at 0.95" in record["reason"]


def test_a_better_challenger_is_promoted_and_its_history_carries_the_test(tmp_path):
    champions = str(tmp_path / "champion")
    assert train(tmp_path, "weak", champions, train_steps=15, learning_rate=3e-4)["promoted"]
    # A stricter gate still promotes a much better model: 0.99 and a margin of 5 points (it gains far more).
    record = train(tmp_path, "strong", champions, train_steps=200, promote_confidence=0.99, promote_margin=0.05)
    assert record["promoted"] and record["gate"]["test"] == "mcnemar" and record["gate"]["p_value"] < 1e-6
    assert record["gate"]["difference"] > 0.05 and record["gate"]["margin"] == 0.05
    assert "better beyond chance at 0.99 and by more than 0.05" in record["reason"]
    shown = subprocess.run([sys.executable, "-m", "trainer.champion", "show", f"--champion_dir={champions}"],
                           cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    pointer = json.loads(shown.stdout)
    assert pointer["metrics"]["gate"]["p_value"] == record["gate"]["p_value"]
    assert pointer["metrics"]["gate"]["discordant"] == record["gate"]["discordant"]


def test_another_metric_is_judged_by_the_paired_bootstrap(champion_dir):
    root, champions = champion_dir
    record = train(root, "loss", champions, train_steps=150, seed=7, promote_metric="loss")
    gate = record["gate"]
    assert gate["test"] == "bootstrap" and gate["resamples"] >= 1000 and gate["seed"] == 7
    assert gate["lower_bound"] < gate["difference"] and not record["promoted"]
    assert "paired bootstrap (2000 resamples, seed 7) of the loss advantage" in record["reason"]


def test_a_challenger_that_loses_a_class_is_refused_by_the_floor(champion_dir, tmp_path):
    """Trained with class 3 weighted 0, the challenger never learns it: better than a short-trained champion on the
    whole, its recall of 3 falls to about 0."""
    champions = str(tmp_path / "champion")
    assert train(tmp_path, "short", champions, train_steps=25)["promoted"]  # About 0.74, class 3 recall 0.8.
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"3": 0.0}))
    kw = dict(train_steps=300, class_weight=str(weights), promote_test="none")
    record = train(tmp_path, "lopsided", champions, promote_max_class_drop=0.1, **kw)
    floor = record["gate"]["class_floor"]
    assert not record["promoted"] and floor["failed"] == "3" and floor["drop"] > 0.5
    assert record["challenger"] > record["champion"]  # Better on the whole, refused for one class.
    assert f"refused: recall of class 3 falls by {floor['drop']:.4f}, more than --promote_max_class_drop=0.1" in \
        record["reason"]
    row = next(r for r in floor["per_class"] if r["class"] == "3")
    assert row["challenger_recall"] < 0.1 and row["champion_recall"] > 0.5 and row["floored"]
    assert train(tmp_path, "lopsided2", champions, **kw)["promoted"]  # Without the floor: the point rule promotes.


@pytest.mark.parametrize("flags, fragment", [
    (dict(promote_test="mcnemar", promote_metric="loss"), "--promote_test=mcnemar compares accuracy"),
    (dict(promote_confidence=1.0), "--promote_confidence=1.0 must be in [0.5, 1)"),
    (dict(promote_max_class_drop=1.5), "--promote_max_class_drop=1.5 must be in [0, 1]"),
    (dict(promote_margin=-0.1), "--promote_margin=-0.1 must be >= 0"),
])
def test_gate_flags_that_cannot_work_are_refused_before_training(tmp_path, flags, fragment):
    from trainer.errors import UsageError

    with pytest.raises(UsageError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(tmp_path, "bad", str(tmp_path / "champion"), train_steps=5, **flags)
    assert not (tmp_path / "bad" / "run_info.json").exists()


def test_the_scheduled_retraining_loop_runs_the_gate_and_registers_only_what_it_promotes(tmp_path):
    """scripts/retrain.sh twice (the weekly loop): the first run promotes and registers (dry run); the second,
    warm-started from that champion, is judged by McNemar on the same examples, and is registered only if the gate
    promoted it; the champion's history carries the test."""
    # The serving container's image: on TensorFlow 2.21 the prebuilt TF 2.15 image is refused for the champion.
    env = dict(os.environ, PYTHON=sys.executable, PROJECT="proj", REGION="europe-west4", REGISTER_DRY_RUN="1",
               SERVING_IMAGE="europe-west4-docker.pkg.dev/proj/trainer/serve:1")
    champions = tmp_path / "champion"
    common = ["bash", "scripts/retrain.sh", "--data=digits", "--backbone=mlp", "--eval_throttle_secs=0",
              f"--model_dir={tmp_path / 'retrain'}", f"--champion_dir={champions}"]
    runs = []
    for steps in (150, 100):
        proc = subprocess.run(common + [f"--train_steps={steps}"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout.partition("\n")[0])
        runs.append((proc, json.loads((Path(summary["model_dir"]) / "run_info.json").read_text())["promotion"]))
    (first, first_record), (second, second_record) = runs
    assert first_record["promoted"] and "artifactUri" in first.stdout.partition("\n")[2]  # Registered (dry run).
    assert env["SERVING_IMAGE"] in first.stdout
    gate = second_record["gate"]
    assert gate["test"] == "mcnemar" and gate["n"] == 385 and "McNemar exact test: p=" in second.stderr
    assert "warm_start" in json.loads((Path(json.loads(second.stdout.partition("\n")[0])["model_dir"]) /
                                       "run_info.json").read_text())
    pointer = json.loads((champions / "CHAMPION.json").read_text())
    if second_record["promoted"]:
        assert pointer["metrics"]["gate"]["p_value"] == gate["p_value"] and "artifactUri" in second.stdout
    else:
        assert pointer["version"] == first_record["version"] and "nothing registered" in second.stderr
