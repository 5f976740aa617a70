"""The engine seam (trainer/engines/base.py), checked on every engine the runtime has: the stages reach an engine
only through the base class's methods, every engine implements all of them, and a real run gives the same on-disk
policy results on each (processed marker, best record, eval_metrics.json with every registered metric, including
a toy metric added through the registry). Runs on TensorFlow 2.15 (both engines) and 2.21 (the Keras engine)."""
import ast
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from trainer import engines
from trainer.config import Config
from trainer.engines import base
from trainer import metric_registry

pytestmark = pytest.mark.tf221  # Runs on TensorFlow 2.21 too (the Keras engine's runtime).

REPO = Path(__file__).resolve().parents[1]


def _available():
    found = []
    for name in engines.ENGINES:
        try:
            found.append(pytest.param(engines.get(name), id=name))
        except (ImportError, AttributeError):  # tf.estimator is gone from TensorFlow 2.16+.
            found.append(pytest.param(None, id=name, marks=pytest.mark.skip(reason=f"--engine={name} needs TF 2.15")))
    return found


ENGINES = _available()
SEAM = {name for name, _ in inspect.getmembers(base.Engine) if not name.startswith("_")}


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_implements_the_seam(engine):
    assert issubclass(engine, base.Engine) and not inspect.isabstract(engine), engine.__abstractmethods__
    assert engine.name in engines.ENGINES and engines.get(engine.name) is engine
    assert isinstance(engine.eager, bool) and engine.resumes_input_under <= {
        "one_device", "mirrored", "multi_worker", "parameter_server", "tpu"}


def test_the_stages_call_engines_through_the_seam_only():
    """Every `engine.<name>` in trainer/stages/ is a method or attribute of the base class; nothing in
    trainer/stages/, trainer/run/ or trainer/policy/ tests --engine or imports an engine's module."""
    used = {}
    for path in [p for part in ("stages", "run", "policy") for p in (REPO / "trainer" / part).glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine":
                used.setdefault(node.attr, path.name)
            if isinstance(node, ast.Compare) and any(
                    isinstance(n, ast.Attribute) and n.attr == "engine" for n in [node.left, *node.comparators]):
                raise AssertionError(f"{path.name}:{node.lineno} tests config.engine outside trainer/engines/")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("trainer.engines.") for n in names), f"{path.name} imports {names}"
    assert used and set(used) <= SEAM, {k: v for k, v in used.items() if k not in SEAM}


def test_the_seam_has_no_default_method():
    """No method of the base class is a do-nothing default one engine overrides because the other needed it: every
    method is abstract; what differs between engines without code is class data."""
    methods = {name for name, value in vars(base.Engine).items() if callable(value) and not name.startswith("__")}
    assert methods and methods == set(base.Engine.__abstractmethods__), methods - base.Engine.__abstractmethods__


def test_the_engine_hands_its_inputs_back_and_writes_nothing_into_the_run():
    """prepare_inputs returns base.Inputs; no engine module assigns an attribute of the stages' Run."""
    for path in (REPO / "trainer" / "engines").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                    assert not (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                and t.value.id == "run"), f"{path.name}:{node.lineno} writes run.{t.attr}"


@pytest.fixture
def toy_metric():
    metric_registry.register(metric_registry.Metric(
        "error_rate", higher_is_better=False, from_confusion=lambda m: 1.0 - np.trace(m) / max(np.sum(m), 1)))
    yield
    metric_registry.unregister("error_rate")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_writes_the_policy_results_on_every_engine(tmp_path, engine, toy_metric):
    from trainer.stages import experiment

    run = tmp_path / "run"
    summary = experiment.train_and_evaluate(Config(
        data="digits", classes=("0", "1", "2"), backbone="mlp", engine=engine.name, train_steps=40, fine_tune_steps=20,
        save_checkpoints_steps=20, eval_throttle_secs=0, early_stopping_patience=5,
        early_stopping_metric="error_rate", model_dir=str(run)))
    assert json.loads((run / "eval" / "processed.json").read_text()) == {"step": 60}  # Both phases trained.
    best = json.loads((run / "export" / "best" / "best.json").read_text())
    assert summary["global_step"] == best["metrics"]["global_step"]  # Early stopping reports the best model.
    assert best["metric"] == "error_rate" and (run / "export" / "best" / best["export"] / "saved_model.pb").exists()
    evaluated = json.loads((run / "eval_metrics.json").read_text())
    assert set(metric_registry.available(3, "categorical", 5)) <= set(evaluated)
    # The toy metric, defined once, computed by this engine's evaluation: 1 - accuracy.
    assert evaluated["error_rate"] == pytest.approx(1.0 - evaluated["accuracy"], abs=1e-6)
    assert json.loads((run / "early_stopping.json").read_text())["metric"] == "error_rate"


@pytest.mark.skipif(engines.ENGINES and not __import__("importlib").util.find_spec("tensorflow_estimator"),
                    reason="--engine=estimator needs TF 2.15")
def test_a_metric_the_estimator_cannot_stream_is_one_line_before_training(tmp_path):
    from trainer.errors import UsageError
    from trainer.stages import experiment

    metric_registry.register(metric_registry.Metric("mean_confidence", True,
                                                    from_scores=lambda p, y, k: float(p.max(-1).mean())))
    try:
        with pytest.raises(UsageError, match="'mean_confidence' has no streaming form on --engine=estimator"):
            experiment.train_and_evaluate(Config(data="digits", backbone="mlp", engine="estimator", train_steps=20,
                                                 model_dir=str(tmp_path / "run")))
    finally:
        metric_registry.unregister("mean_confidence")
    assert not list((tmp_path / "run").glob("model.ckpt-*"))
