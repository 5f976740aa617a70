"""A run, as stages: prepare (trainer.stages.prepare) -> the phases -> finish (trainer.stages.finish).

`train_and_evaluate(config)` is the whole run, callable from tests and other programs. Everything a user
can get wrong is checked in `prepare`, before the engine builds anything. The engine (--engine: the Estimator's,
trainer.engines.estimator, or Model.fit's, trainer.engines.keras) is reached through the methods of
trainer.engines.base.Engine. Under a multi-process strategy
only the chief writes the files of the output contract; workers and the evaluator leave nothing else.
"""
from typing import Optional

from trainer.config import Config, validate
from trainer.data import record_faults
from trainer import engines
from trainer.model import layer_rates, models
from trainer.run import distribution, early_stopping, phases, preemption, run_lock
from trainer.stages import finish, preflight, prepare
from trainer.util import console, files


def train_and_evaluate(config: Config) -> dict:
    """Runs (or resumes) one training job and writes the files of the output contract.

    Returns:
        The summary printed as the last line: accuracy, loss, global_step, model_dir, export
        (for a worker or evaluator task: its role and the model_dir).

    Raises:
        UsageError: for any mistake in flags or data, before training starts.
    """
    config = validate(config)
    preflight.check(config)  # gs:// paths TensorFlow cannot reach, an unreadable CHAMPION.json: one error line.
    files.ensure_dir(config.model_dir, "model_dir")
    if config.checkpoint_dir != config.model_dir:
        files.ensure_dir(config.checkpoint_dir, "checkpoint_dir")
    chief = distribution.parse_tf_config().get("task", {}).get("type", "chief") in ("chief", "master")
    with run_lock.hold(config.model_dir, chief):  # One run per folder; released however the process ends.
        return _run(config)


def _run(config: Config) -> dict:
    console.attach(config.model_dir)  # The full log: <model_dir>/train.log (command line only).
    engine_class = engines.get(config.engine)
    plan = distribution.get_plan(config.strategy, config.num_gpus, config.num_cpu_replicas,
                                 tpu=config.tpu, use_tpu=config.use_tpu, eager=engine_class.eager)
    if plan.task_type == "ps":
        preemption.uninstall()
    engine = engine_class(config, plan)
    run = prepare.prepare(config, plan, engine)
    if run.dry_run_summary:
        return run.dry_run_summary
    inputs = engine.prepare_inputs(run)  # The engine's refusals of the plan come first: before any expensive work.
    run.train_input, run.eval_input, run.cache = inputs
    if inputs.cache:  # The phases train the head on the cached features.
        run.model = inputs.cache.head
    eval_metrics = _train_phases(run, engine)
    run.run_info["skipped_records"] = record_faults.skipped(run.dataset)
    if not plan.is_chief:
        return {"task": plan.task_type, "index": plan.task_index, "model_dir": config.model_dir}
    return finish.finish(run, engine, eval_metrics)


def _train_phases(run: prepare.Run, engine) -> Optional[dict]:
    """Each phase still to train, as its recipe says; the last one's final evaluation (None if none ran here)."""
    try:
        return _each_phase(run, engine)
    finally:  # However the phases end (the last one, a stop, a signal, an error): once per run.
        engine.end_training()


def _each_phase(run: prepare.Run, engine) -> Optional[dict]:
    config, eval_metrics = run.config, None
    for index, step in enumerate(run.steps):
        if not run.cache:  # The phase decides the model: its freezing, BatchNorm mode (also after a restart).
            run.model, run.built = phases.model_for(config, run.num_classes, run.image_shape, step.phase,
                                                    run.model, run.built, engine.scope)
        if _stopped_early(config, run.steps[index:]):  # Decided earlier (this run or one before a restart).
            break
        schedule = phases.schedule(config, step.phase.learning_rate, step.first_step, step.phase.last_step)
        with engine.scope():
            models.compile_model(run.model, config, schedule, run.run_info.get("class_weights"),
                                 steps_per_execution=engine.steps_per_execution,
                                 layer_factors=layer_rates.factors(run.model, step.phase.get("layer_lr_decay") or 1.0),
                                 ema_first_step=step.first_step)
        caught_up = engine.start_phase(run, step, schedule)
        if caught_up and _stopped_early(config, run.steps[index:]):  # By an evaluation an interruption cut short.
            break
        eval_metrics = engine.train_phase(run, step, schedule)
        # A signal during the phase's last checkpoint or evaluation: stop here, not after the rest of the run.
        preemption.stop_if_requested((eval_metrics or {}).get("global_step"))
    return eval_metrics


def _stopped_early(config: Config, remaining) -> bool:
    """True (and a console line naming the phases left untrained) once early stopping has decided."""
    stopped = early_stopping.stopped_at(config.model_dir) if config.early_stopping_patience else None
    if stopped is None:
        return False
    console.say("%s", early_stop_line(stopped, remaining))
    decided_with = early_stopping.read_state(config.model_dir).get("patience")
    if decided_with is not None and decided_with != config.early_stopping_patience:  # New-user trial c081.
        console.say("--early_stopping_patience=%d has no effect here: the stop was decided with patience %d and is "
                    "kept; to train on, start a new --model_dir with --warm_start_from=%s",
                    config.early_stopping_patience, decided_with, config.model_dir)
    return True


def early_stop_line(stopped: int, remaining) -> str:
    """`stopped early at step 50 (fine_tune, 20..50 of 20..100)`, naming the phases left untrained (new-user #7:
    a phase that trained until the stop was called untrained)."""
    parts, untrained = [], []
    for s in remaining:
        if s.first_step < stopped:
            parts.append(f"{s.phase.name}, {s.first_step}..{stopped} of {s.first_step}..{s.phase.last_step}")
        else:
            untrained.append(f"{s.phase.name} (steps {s.first_step}..{s.phase.last_step})")
    line = f"stopped early at step {stopped}" + (f" ({'; '.join(parts)})" if parts else "")
    return line + (f"; not trained: {', '.join(untrained)}" if untrained else "")
