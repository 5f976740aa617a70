"""scripts/benchmark_gpu.py: its plan, case filter and measurement as pure functions (unit: no TensorFlow, no
process), and its --quick mode run for real on this machine's CPU (slow)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf221  # The plan's unit checks run on both runtimes; the quick run is slow.

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark_gpu", REPO / "scripts" / "benchmark_gpu.py")
benchmark_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_gpu)

ROW_KEYS = {"runner", "engine", "runtime", "precision", "xla", "replicas", "images_per_sec", "device"}
TRAINER_BACKBONES = ("mlp", "small_cnn", "mobilenet_v2", "inception_v3", "efficientnet_b0")
ONE_GPU_TF215 = benchmark_gpu.Env(tf_version="2.15.1", python="3.11.7", has_estimator=True,
                                  gpus=("NVIDIA H100 80GB HBM3",), gpu_memory_mb=81559,
                                  trainer_backbones=TRAINER_BACKBONES, cpu_count=16)
TWO_GPUS_TF221 = benchmark_gpu.Env(tf_version="2.21.0", python="3.12.3", has_estimator=False,
                                   gpus=("NVIDIA H100 80GB HBM3",) * 2, gpu_memory_mb=81559,
                                   trainer_backbones=TRAINER_BACKBONES, cpu_count=16)
CPU_TF215 = benchmark_gpu.Env(tf_version="2.15.1", python="3.11.7", has_estimator=True,
                              trainer_backbones=TRAINER_BACKBONES, cpu_count=2)


def plan(argv, env):
    args = benchmark_gpu.parse_args(argv)
    return args, benchmark_gpu.sizes_of(args), benchmark_gpu.select(benchmark_gpu.plan_cases(args, env), args.cases)


@pytest.mark.unit
def test_the_full_plan_on_one_gpu_fits_eight_minutes_and_covers_every_factor():
    args, sizes, cases = plan([], ONE_GPU_TF215)
    assert sizes.image_size == 224 and 64 <= sizes.batch_size <= 256 and 0 < sizes.budget_s < 480
    ran = [c for c in cases if not c.skip]
    total = sum(benchmark_gpu.estimate_s(c, sizes, ONE_GPU_TF215) for c in cases)
    assert total + 20 < sizes.budget_s, total  # The probe and the data come on top.
    assert {c.model for c in ran} == {"mobilenet_v2", "efficientnet_v2_b0"}
    assert {c.precision for c in ran} == {"float32", "mixed_float16"} and {c.xla for c in ran} == {False, True}
    assert {c.replicas for c in ran} == {1, 2}
    assert {(c.runner, c.engine) for c in ran} == {("keras-fit", None), ("trainer", "estimator"), ("trainer", "keras")}
    # Each trainer case has its keras-fit twin; the model the trainer lacks runs as keras-fit only, and says so.
    twins = {(c.model, c.precision, c.xla, c.replicas) for c in cases if c.runner == "keras-fit"}
    assert all((c.model, c.precision, c.xla, c.replicas) in twins for c in cases if c.runner == "trainer")
    efficientnet = [c for c in cases if c.model == "efficientnet_v2_b0"]
    assert efficientnet and all(c.runner == "keras-fit" and "keras-fit only" in c.note for c in efficientnet)
    # One physical GPU: keras-fit splits it for 2 replicas; the trainer cannot, and is skipped with the reason.
    for case in (c for c in cases if c.replicas == 2):
        if case.runner == "keras-fit":
            assert not case.skip and "logical GPUs" in case.note
        else:
            assert case.skip.startswith("skipped:") and "physical GPU" in case.skip
    assert len({c.id for c in cases}) == len(cases)


@pytest.mark.unit
def test_factorial_on_two_gpus_without_the_estimator():
    _, sizes, cases = plan(["--factorial"], TWO_GPUS_TF221)
    assert sizes.budget_s == 0  # The factorial is timed by its estimate, not cut.
    fit = {(c.model, c.precision, c.xla, c.replicas) for c in cases if c.runner == "keras-fit"}
    assert len(fit) == 2 * 2 * 2 * 2
    trainer = [c for c in cases if c.runner == "trainer"]
    assert {c.engine for c in trainer} == {"keras"} and len(trainer) == 2 * 2 * 2
    assert not any(c.skip for c in cases)  # Two physical GPUs: the trainer's --num_gpus=2 runs.
    assert not any("logical" in c.note for c in cases)


@pytest.mark.unit
def test_quick_plan_and_the_case_filter():
    _, sizes, cases = plan(["--quick"], CPU_TF215)
    assert (sizes.image_size, sizes.batch_size) == (96, 16) and sizes.budget_s < 180
    assert [c.id for c in cases] == ["keras-fit/mobilenet_v2/float32/noxla/r1",
                                     "trainer-estimator/mobilenet_v2/float32/noxla/r1",
                                     "trainer-keras/mobilenet_v2/float32/noxla/r1"]
    assert sum(benchmark_gpu.estimate_s(c, sizes, CPU_TF215) for c in cases) < 150
    _, _, cases = plan(["--cases=*/xla/r1,efficientnet_v2_b0/float32"], ONE_GPU_TF215)
    assert cases and all(c.id.endswith("/xla/r1") or "efficientnet_v2_b0/float32" in c.id for c in cases)
    assert not any(c.id.endswith("/noxla/r1") and c.model == "mobilenet_v2" for c in cases)
    _, _, cases = plan(["--cases=trainer-keras", "--batch_size=64", "--image_size=160"], ONE_GPU_TF215)
    assert cases and {c.runner for c in cases} == {"trainer"}
    with pytest.raises(SystemExit):
        benchmark_gpu.parse_args(["--batch_size=33"])


@pytest.mark.unit
def test_list_prints_the_cases_and_the_estimate_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(benchmark_gpu.subprocess, "Popen", None)  # Any child process would fail.
    assert benchmark_gpu.main(["--list"], env=ONE_GPU_TF215) == 0
    out = capsys.readouterr().out
    assert "estimated" in out and "budget 460 s" in out
    assert "trainer-estimator/mobilenet_v2/mixed_float16/xla/r1" in out
    assert "keras-fit/efficientnet_v2_b0/float32/noxla/r1" in out


@pytest.mark.unit
def test_the_window_leaves_out_the_warm_up():
    # Step 2 after 30 s of compilation, a slow second second, then 10 steps/s.
    marks = [(30.0, 2), (30.6, 3), (31.2, 5)] + [(31.5 + 0.5 * i, 10 + 5 * i) for i in range(40)]
    start, end = benchmark_gpu.steady_window(marks, warmup_s=2.0, measure_s=4.0, min_steps=20)
    assert start[0] >= 32.0 and end[0] - start[0] >= 4.0 and end[1] - start[1] >= 20
    rate, steps, seconds = benchmark_gpu.rate_of((start, end), batch_size=16)
    assert rate == pytest.approx(10 * 16) and steps == end[1] - start[1]
    assert benchmark_gpu.steady_window(marks[:8], 2.0, 4.0, 20) is None  # Not complete yet.
    assert benchmark_gpu.steady_window([], 2.0, 4.0, 20) is None
    # Slow steps: the window waits for min_steps, however long.
    slow = [(float(i), i) for i in range(1, 30)]
    start, end = benchmark_gpu.steady_window(slow, 2.0, 1.0, 10)
    assert end[1] - start[1] == 10


@pytest.mark.unit
def test_step_marks_from_the_bar_and_from_train_log():
    bar = benchmark_gpu.BarMarks()
    bar.feed("phase train: steps 0..1000000\n\r\x1b[K[....] step 2/1000000 (0%), 2.0 steps/s", 10.0)
    bar.feed("\r\x1b[K[....] step 9/1000", 10.5)  # Cut inside a mark: counted when complete.
    bar.feed("000 (0%), 6.9 steps/s\r\x1b[K[....] step 16/1000000 (0%)", 11.0)
    assert bar.marks == [(10.0, 2), (11.0, 9), (11.0, 16)]
    log = ("I1205 06:13:36.484157 140046988839808 engine.py:124] phase train: steps 0..60\n"
           "I1205 06:13:46.725424 140046988839808 progress.py:43] step 52/60 (87%), 6.4 steps/s, 102 examples/s\n"
           "I1205 06:13:47.993331 140046988839808 progress.py:43] step 60/60 (100%), 6.3 steps/s, 101 examples/s\n")
    (t0, s0), (t1, s1) = benchmark_gpu.marks_from_log(log, year=2026)
    assert (s0, s1) == (52, 60) and t1 - t0 == pytest.approx(1.267907, abs=1e-4)


@pytest.mark.unit
def test_the_table_relates_each_trainer_row_to_its_keras_fit_twin():
    args = benchmark_gpu.parse_args(["--quick"])
    sizes = benchmark_gpu.sizes_of(args)
    cases = benchmark_gpu.plan_cases(args, CPU_TF215)
    rows = [benchmark_gpu.row_of(c, sizes, args, CPU_TF215) for c in cases]
    rows[0]["images_per_sec"], rows[1]["images_per_sec"] = 100.0, 80.0
    rows[2]["error"] = "exited (1) before its measurement: error: something"
    table = benchmark_gpu.markdown(rows)
    assert "| 0.80 |" in table and "error: something" in table and table.count("\n") == 1 + len(rows)
    assert all(ROW_KEYS <= set(r) for r in rows)


@pytest.mark.slow
def test_quick_run_measures_every_runner_and_engine(tmp_path):
    output = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark_gpu.py"), "--quick",
                           f"--output={output}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(output.read_text())
    # This interpreter's engines (tests/conftest.py: tensorflow_estimator is installed only with TensorFlow 2.15).
    engines = {"estimator", "keras"} if importlib.util.find_spec("tensorflow_estimator") else {"keras"}
    assert {(r["runner"], r["engine"]) for r in rows} == {("keras-fit", None)} | {("trainer", e) for e in engines}
    for row in rows:
        assert ROW_KEYS <= set(row), row
        assert row["runtime"] == rows[0]["runtime"] != "" and row["device"] == "CPU" and row["replicas"] == 1
        assert (row["precision"], row["xla"]) == ("float32", False)
        assert row["error"] is None and row["images_per_sec"] > 0, row
        assert row["steps"] >= 5 and row["seconds"] >= 5.0
    assert "| runner | engine |" in proc.stdout
