"""The recipe's second round on real runs, on each engine the runtime has: layer-wise rates in the fine-tune phase
(recorded in its phase, a trunk that barely moves under a tiny factor while the head trains, a resume with another
factor starting a recorded phase); test-time augmentation in the final evaluation and in batch prediction; the
moving average of the weights (--ema_decay) as what is evaluated, exported and written."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import restart_cases
from conftest import REPO, run_cli
from test_bad_inputs import assert_error

pytestmark = [pytest.mark.tf221]
HAS_ESTIMATOR = hasattr(tf, "estimator")
ENGINES = [pytest.param("estimator", marks=pytest.mark.skipif(not HAS_ESTIMATOR, reason="needs TF 2.15")), "keras"]
# Where the engines share the code under test (the finish stage): the Estimator's case in the slow suite.
ENGINES_SLOW_ESTIMATOR = [pytest.param("estimator", marks=[
    pytest.mark.skipif(not HAS_ESTIMATOR, reason="needs TF 2.15"), pytest.mark.slow]), "keras"]
TWO_PHASES = ["--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--freeze=all", "--fine_tune_freeze=none",
              "--train_steps=10", "--fine_tune_steps=10", "--optimizer=sgd", "--learning_rate=0.05",
              "--save_checkpoints_steps=10", "--eval_throttle_secs=0", "--keep_checkpoint_max=100", "--batch_size=16"]


@pytest.mark.parametrize("engine", ENGINES)
def test_layer_rates_hold_the_trunk_under_a_tiny_factor_and_are_recorded(tmp_path, engine):
    run = tmp_path / "run"
    proc = run_cli(*TWO_PHASES, "--layer_lr_decay=1e-6", f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [p.get("layer_lr_decay") for p in phases] == [None, 1e-6]
    boundary, end = (tf.train.load_checkpoint(str(run / f"model.ckpt-{s}")) for s in (10, 20))
    # conv1 is 4 layers with weights down (1e-24 of the rate), conv2 2 (1e-12): they keep their values; bn2's
    # gamma (1e-6) moves by less than 1e-6 of a full step; the head trains at the full rate.
    for name in ("conv1/kernel", "conv2/kernel"):
        np.testing.assert_allclose(end.get_tensor(name), boundary.get_tensor(name), rtol=0, atol=1e-9)
    assert not np.allclose(end.get_tensor("probabilities/kernel"), boundary.get_tensor("probabilities/kernel"))


def test_bad_values_are_one_line_each(capsys, tmp_path):
    assert_error(capsys, "--layer_lr_decay=1.5 must be in (0, 1]", "--data=digits", "--layer_lr_decay=1.5",
                 f"--model_dir={tmp_path / 'bad'}")
    assert_error(capsys, "--layer_lr_decay rates the layers of a built-in trunk", "--data=digits",
                 "--model_fn=multi_io_model:build", "--layer_lr_decay=0.9", f"--model_dir={tmp_path / 'bad2'}")
    assert_error(capsys, "--ema_decay=1.0 must be in [0, 1)", "--data=digits", "--ema_decay=1",
                 f"--model_dir={tmp_path / 'bad3'}")
    assert_error(capsys, "--tta flips and crops images of the built-in image models", "--data=digits",
                 "--model_fn=multi_io_model:build", "--tta=flip", f"--model_dir={tmp_path / 'bad4'}")
    assert_error(capsys, "--augment applies to the built-in image models, not --model_fn", "--data=digits",
                 "--model_fn=multi_io_model:build", "--augment=flip", f"--model_dir={tmp_path / 'bad5'}")


@pytest.mark.slow
def test_a_resume_with_another_factor_starts_a_recorded_phase(tmp_path):
    run = tmp_path / "run"
    first = run_cli(*TWO_PHASES, "--engine=keras", "--layer_lr_decay=0.5", f"--model_dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(*TWO_PHASES, "--engine=keras", "--layer_lr_decay=0.25", "--fine_tune_steps=20",
                    f"--model_dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--layer_lr_decay=0.25 (was 0.5)" in again.stderr
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["name"], p["first_step"], p["last_step"], p.get("layer_lr_decay")) for p in phases] == [
        ("train", 0, 10, None), ("fine_tune", 10, 20, 0.5), ("fine_tune (flags changed at step 20)", 20, 30, 0.25)]


@pytest.mark.parametrize("engine", ENGINES_SLOW_ESTIMATOR)
def test_tta_reports_plain_and_averaged_figures_of_the_served_model(tmp_path, engine):
    run = tmp_path / "run"
    proc = run_cli("--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--train_steps=30",
                   "--save_checkpoints_steps=30", "--tta=flip_crop", "--augment=randaugment:2:5,mixup",
                   f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "eval_metrics.json").read_text())
    tta = metrics["tta"]
    # report.html (newcomer pass 2026-12-05: no TTA figures, --augment as a Python list).
    page = (run / "report.html").read_text()
    assert "<td>--augment</td><td>randaugment:2:5,mixup:0.2</td>" in page
    assert "<h2>Test-time augmentation</h2>" in page and f'<td class="n">{tta["accuracy"]:.4f}</td>' in page
    assert (tta["views"], tta["n_views"], tta["n"]) == ("flip_crop", 4, 167)
    # Plain: the served model on the validation split, as the evaluation counted it.
    assert tta["plain"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert 0 <= tta["accuracy"] <= 1 and tta["nll"] > 0 and tta["nll"] != tta["plain"]["nll"]
    line = f"test-time augmentation (flip_crop, 4 views): accuracy {tta['plain']['accuracy']:.4f} -> " \
        f"{tta['accuracy']:.4f}"
    assert line in proc.stderr


@pytest.mark.slow
def test_predict_with_tta_averages_the_image_and_its_mirror(tmp_path):
    from PIL import Image

    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=6)
    run = tmp_path / "run"
    proc = run_cli(f"--data={folder}", "--backbone=small_cnn", "--image_size=16", "--train_steps=20", "--batch_size=4",
                   "--engine=keras", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mirrored = tmp_path / "mirrored"
    (mirrored / "cats").mkdir(parents=True)
    for path in sorted((folder / "cats").glob("*.png")):  # Lossless: the mirror is exactly the flipped pixels.
        Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored / "cats" / path.name)
    outputs = {name: _predicted(run, data, tmp_path / f"{name}.jsonl", tta, "path")
               for name, data, tta in (("plain", folder / "cats", "none"), ("mirror", mirrored / "cats", "none"),
                                       ("tta", folder / "cats", "flip"))}
    outputs = {name: {os.path.basename(k): v for k, v in rows.items() if k.endswith(".png")}
               for name, rows in outputs.items()}
    assert len(outputs["tta"]) == 2
    for file, probabilities in outputs["tta"].items():
        for cls, p in probabilities.items():
            expected = (outputs["plain"][file][cls] + outputs["mirror"][file][cls]) / 2
            assert p == pytest.approx(expected, abs=1e-5), (file, cls)
    bad = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={run}", f"--data={folder}",
                          f"--output={tmp_path / 'x.csv'}", "--tta=rotate"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "--tta" in bad.stderr and "Traceback" not in bad.stderr


EMA_RUN = [*TWO_PHASES, "--ema_decay=0.9", "--export=final", "--calibrate=none", "--tta=flip"]


@pytest.mark.parametrize("engine", ENGINES)
def test_ema_weights_are_what_is_evaluated_exported_and_written(tmp_path, engine):
    run = tmp_path / "run"
    proc = run_cli(*EMA_RUN, f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    phases = json.loads((run / "run_info.json").read_text())["phases"]
    assert [(p["ema_decay"], p["ema_warmup"]) for p in phases] == [(0.9, True)] * 2
    _averages_served(run)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_killed_in_the_final_evaluation_the_rerun_still_serves_and_evaluates_the_averages(tmp_path, engine):
    """A restart that trains nothing (killed at the final evaluation): the averages are evaluated and exported."""
    import restart_cases

    run = tmp_path / "run"
    args = [*EMA_RUN, f"--engine={engine}"]
    code, stderr, _ = restart_cases.interrupted_run(args, run, {"how": "kill", "point": "finish_evaluation"})
    assert code == -9, stderr[-2000:]  # Killed at the fault point, before eval_metrics.json.
    proc = run_cli(*args, f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _averages_served(run)


def _averages_served(run):
    from trainer.model import ema
    from trainer.model.keras_files import load_keras
    from trainer.outputs import export

    final = tf.train.load_checkpoint(str(run / "model.ckpt-20"))
    averages = ema.average_names(final.get_variable_to_shape_map(), ["conv1/kernel", "probabilities/kernel"])
    assert set(averages) == {"conv1/kernel", "probabilities/kernel"}  # Phase 2 trains the trunk too.
    h5 = {w.name.split(":")[0]: w.numpy() for w in load_keras(str(run / "keras_model.h5")).weights}
    version = sorted(p for p in (run / "export" / "final").iterdir() if p.name.isdigit())[-1]
    exported = tf.train.load_checkpoint(export.export_weights(str(version)))
    for name, slot in averages.items():
        average, raw = final.get_tensor(slot), final.get_tensor(name)
        assert not np.allclose(average, raw), name
        np.testing.assert_allclose(h5[name], average, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(exported.get_tensor(name), average, rtol=1e-6, err_msg=name)
    metrics = json.loads((run / "eval_metrics.json").read_text())
    # The evaluation saw the averages: its accuracy is keras_model.h5's on the same split (--tta's plain figure).
    assert metrics["global_step"] == 20
    assert metrics["tta"]["plain"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert metrics["tta"]["plain"]["nll"] == pytest.approx(metrics["loss"], rel=1e-3)  # Plain cross-entropy here.


@pytest.mark.skipif(not HAS_ESTIMATOR, reason="runtime-neutral: the TF 2.15 leg runs it")
def test_dry_run_resolves_the_second_round_flags(tmp_path):
    run = tmp_path / "dry"
    proc = run_cli("--data=digits", "--backbone=small_cnn", "--train_steps=10", "--fine_tune_steps=10",
                   "--learning_rate=0.01", "--ema_decay=0.99", "--layer_lr_decay=0.5", "--tta=flip_crop",
                   "--augment=randaugment,mixup,cutmix:0.5", "--dry_run", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    train, tune = info["plan"]
    assert train["augment"] == [["randaugment", 2.0, 9.0], ["mixup", 0.2], ["cutmix", 0.5]]
    assert (train["ema_decay"], train["ema_warmup"], info["flags"]["tta"]) == (0.99, True, "flip_crop")
    assert "layer_learning_rates" not in train and tune["layer_lr_decay"] == 0.5
    # The head at the phase's rate (0.001, a tenth), each trunk layer with weights down from it at half the last.
    assert tune["layer_learning_rates"] == pytest.approx({"bn2": 5e-4, "conv2": 2.5e-4, "bn1": 1.25e-4,
                                                          "conv1": 6.25e-5})
    assert not list(run.glob("*.ckpt*"))
    # The console says the plan too (newcomer pass 2026-12-05: only the file had it).
    assert ("plan: fine_tune steps 10..20: adam at 0.001, freeze none, augment randaugment:2:9,mixup:0.2,cutmix:0.5, "
            "ema_decay 0.99, layer_lr_decay 0.5") in proc.stderr, proc.stderr[-2000:]
    assert f"dry run: the plan, resolved, is in {run / 'run_info.json'} (`plan`)" in proc.stderr


ROUND_TWO = ["--augment=randaugment:1:5,mixup:0.2,cutmix", "--ema_decay=0.9", "--layer_lr_decay=0.7", "--tta=flip",
             "--export=final", "--calibrate=none"]


def _served_is_the_average(run, step):
    from trainer.model import ema
    from trainer.model.keras_files import load_keras

    final = tf.train.load_checkpoint(str(run / f"model.ckpt-{step}"))
    averages = ema.average_names(final.get_variable_to_shape_map(), ["conv1/kernel", "probabilities/kernel"])
    h5 = {w.name.split(":")[0]: w.numpy() for w in load_keras(str(run / "keras_model.h5")).weights}
    assert set(averages) == {"conv1/kernel", "probabilities/kernel"}
    for name, slot in averages.items():
        np.testing.assert_allclose(h5[name], final.get_tensor(slot), rtol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_second_round_under_two_mirrored_cpu_replicas(tmp_path, engine):
    run = tmp_path / "run"
    proc = run_cli(*TWO_PHASES, *ROUND_TWO, "--strategy=mirrored", "--num_cpu_replicas=2", f"--engine={engine}",
                   f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["num_replicas"] == 2 and info["phases"][1]["layer_lr_decay"] == 0.7
    assert "tta" in json.loads((run / "eval_metrics.json").read_text())
    _served_is_the_average(run, 20)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_second_round_on_a_cluster_with_an_evaluator(tmp_path, engine):
    """The Estimator trains one phase per multi-worker job (it refuses two): its cluster trains the whole model in
    one phase, without --layer_lr_decay (a fine-tune phase's)."""
    run = tmp_path / "mw"
    flags = [*TWO_PHASES, *ROUND_TWO] if engine == "keras" else ["--freeze=none"] + [
        f for f in TWO_PHASES + ROUND_TWO if not f.startswith(("--fine_tune", "--layer_lr_decay", "--freeze"))]
    steps = 20 if engine == "keras" else 10
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.launch_local", "--workers=1", "--evaluator", "--timeout=400", "--",
         f"--engine={engine}", *flags, "--export=latest", f"--model_dir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["strategy"] == "multi_worker" and [p["ema_decay"] for p in info["phases"]] == [0.9] * (steps // 10)
    _served_is_the_average(run, steps)
    # The evaluator task evaluated and exported each checkpoint's averages (not its own optimizer's stale ones).
    from trainer.model import ema
    from trainer.outputs import export

    final = tf.train.load_checkpoint(str(run / f"model.ckpt-{steps}"))
    version = sorted(p for p in (run / "export" / "latest").iterdir() if p.name.isdigit())[-1]
    exported = tf.train.load_checkpoint(export.export_weights(str(version)))
    for name, slot in ema.average_names(final.get_variable_to_shape_map(), ["conv1/kernel"]).items():
        np.testing.assert_allclose(exported.get_tensor(name), final.get_tensor(slot), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("engine", ENGINES_SLOW_ESTIMATOR)
def test_ema_and_tta_with_the_feature_cache(tmp_path, engine):
    """--cache_features trains the head on cached features: its average is what the full model is written with."""
    from trainer.model.keras_files import load_keras

    run = tmp_path / "run"
    proc = run_cli("--data=digits", "--classes=0,1,2,3", "--backbone=small_cnn", "--train_steps=30", "--cache_features",
                   "--freeze=all", "--ema_decay=0.9", "--noema_warmup", "--tta=flip", "--export=final",
                   "--calibrate=none",
                   "--save_checkpoints_steps=30", f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tf.train.load_checkpoint(str(run / "model.ckpt-30"))
    from trainer.model import ema

    (slot,) = ema.average_names(final.get_variable_to_shape_map(), ["probabilities/kernel"]).values()
    h5 = [w for w in load_keras(str(run / "keras_model.h5")).weights if w.name.startswith("probabilities/kernel")]
    np.testing.assert_allclose(h5[0].numpy(), final.get_tensor(slot), rtol=1e-6)
    metrics = json.loads((run / "eval_metrics.json").read_text())
    assert metrics["tta"]["plain"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert json.loads((run / "run_info.json").read_text())["phases"][0]["ema_warmup"] is False


@pytest.mark.slow
def test_predict_with_tta_on_a_model_that_takes_arrays(tmp_path):
    """A model trained on an .npz takes float pixels: its views are arrays, averaged as for image files."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (60, 8, 8)).astype(np.float32)
    y = np.arange(60) % 3
    x[y == 1, :, :4] += 120  # A class the mirror moves to the other side.
    np.savez(tmp_path / "data.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    np.savez(tmp_path / "mirrored.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:, :, ::-1], y_test=y[48:])
    run = tmp_path / "run"
    proc = run_cli(f"--data={tmp_path / 'data.npz'}", "--backbone=small_cnn", "--train_steps=20", "--batch_size=8",
                   "--engine=keras", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = {name: _predicted(run, tmp_path / data, tmp_path / f"{name}.jsonl", tta, "index")
               for name, data, tta in (("plain", "data.npz", "none"), ("mirror", "mirrored.npz", "none"),
                                       ("tta", "data.npz", "flip"))}
    assert len(outputs["tta"]) == 12
    for index, probabilities in outputs["tta"].items():
        for cls, p in probabilities.items():
            assert p == pytest.approx((outputs["plain"][index][cls] + outputs["mirror"][index][cls]) / 2, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_the_average_and_layer_rates_under_mixed_precision(tmp_path, engine):
    """Mixed precision wraps the optimizer in a LossScaleOptimizer, which model_to_estimator rebuilds from its config:
    the inner optimizer keeps the average and the rates (their classes are registered under names of their own)."""
    run = tmp_path / "run"
    proc = run_cli(*TWO_PHASES, "--mixed_precision", "--ema_decay=0.9", "--layer_lr_decay=0.8", "--export=final",
                   "--calibrate=none", "--tta=flip", f"--engine={engine}", f"--model_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _averages_served(run)


def _predicted(run, data, out, tta: str, key: str) -> dict:
    """{row key: {class: probability}} of `trainer.predict --tta=...` over `data`; every row without an error."""
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={run}", f"--data={data}",
                           f"--output={out}", f"--tta={tta}", "--top_k=3"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["tta"] == tta  # The summary says how it predicted.
    assert (f"views (--tta={tta})" in proc.stderr) == (tta != "none"), proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["error"] is None for r in rows), rows[:2]
    return {r[key]: dict(r["top_k"]) for r in rows}


def _eval_line(stderr: str, step: int) -> str:
    """`accuracy A, loss L` of the console's `eval @ step N:` line (one only)."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"eval @ step {step}:")]
    assert len(lines) == 1, stderr[-3000:]
    return re.search(r"accuracy [0-9.]+, loss [0-9.]+", lines[0])[0]


@pytest.mark.parametrize("engine", ENGINES_SLOW_ESTIMATOR)  # make test's 20 minutes: the Estimator's in test-slow.
def test_a_boundary_checkpoint_killed_before_its_evaluation_is_caught_up_with_its_averages(tmp_path, engine):
    """Newcomer pass 2026-12-05: killed between the save of a phase's last checkpoint and its evaluation, the rerun
    caught it up after the next phase's start had rewritten it (a fresh optimizer state: without the averages), so
    it evaluated (and could export as best) the trained weights, not the averages; so did every resume with a changed
    recipe. The catch-up comes before the rewrite now: the same command, and one with another --ema_decay (a new
    phase at that step), evaluate the step as the uninterrupted run did."""
    args = [*TWO_PHASES, "--ema_decay=0.9", "--noema_warmup", "--calibrate=none", f"--engine={engine}"]
    whole = restart_cases.run_to_end(args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = _eval_line(whole.stderr, 10)
    for name, rerun in (("same", args), ("changed", [*args, "--ema_decay=0.8"])):
        run = tmp_path / name
        code, err, _ = restart_cases.interrupted_run(args, run, {"point": "evaluation_batch", "how": "kill"})
        assert code == -9 and "eval @ step 10" not in err, err[-3000:]
        again = restart_cases.run_to_end(rerun, run)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "catching up: step 10 was saved before the interruption" in again.stderr, again.stderr[-3000:]
        assert _eval_line(again.stderr, 10) == expected, name
