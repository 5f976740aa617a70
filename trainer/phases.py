"""Training phases: head training, then fine-tuning, and any resume that changes the recipe.

A phase is a span of global steps trained with one recipe (optimizer, learning
rate, freezing). Each phase runs its own Estimator over the same model_dir. At a
phase boundary the latest checkpoint is rewritten with the model's weights (and
BatchNorm statistics, and the global step) and a *fresh* optimizer state for the
new graph: optimizer slots exist only for what was trainable, so restoring the
old state would fail (more trainable variables) or carry stale moments.

The phases a run went through are recorded in run_info.json (`phases`); a
resumed run compares the recipe of its current phase with the recorded one and
starts a new phase when they differ (a changed --learning_rate, --optimizer or
--freeze) instead of failing or silently keeping the old values.
"""
import dataclasses
import math
import os
from typing import Callable, List, Optional

import tensorflow as tf
from absl import logging

from trainer import class_weights, files, models
from trainer.config import Config
from trainer.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    first_step: int
    last_step: int
    freeze: str
    learning_rate: float
    optimizer: str
    trunk_inference: bool = False  # BatchNorm in inference mode while parts of the trunk train.

    def recipe(self) -> tuple:
        return (self.optimizer, float(self.learning_rate), str(self.freeze))

    def record(self, trainable_params: Optional[int] = None) -> dict:
        return {"name": self.name, "first_step": self.first_step, "last_step": self.last_step,
                "freeze": self.freeze, "learning_rate": self.learning_rate, "optimizer": self.optimizer,
                "trainable_params": trainable_params}


def steps_for(epochs: float, examples: Optional[int], batch_size: int, flag: str) -> int:
    if examples is None:
        raise UsageError(f"--{flag}={epochs} needs the number of training examples, unknown for TFRecords read "
                         "with --labels_file; give steps instead")
    return max(1, math.ceil(epochs * examples / batch_size))


def plan(config: Config, train_examples: Optional[int]) -> List[Phase]:
    """The phases the flags ask for: training, then fine-tuning when --fine_tune_steps/epochs is set."""
    train_steps = (steps_for(config.epochs, train_examples, config.batch_size, "epochs") if config.epochs
                   else config.train_steps)
    phases = [Phase("train", 0, train_steps, config.freeze or models.default_freeze(config),
                    config.learning_rate, config.optimizer)]
    tune = config.fine_tune_steps or (steps_for(config.fine_tune_epochs, train_examples, config.batch_size,
                                                "fine_tune_epochs") if config.fine_tune_epochs else 0)
    if tune:
        phases.append(Phase("fine_tune", train_steps, train_steps + tune, config.fine_tune_freeze,
                            config.fine_tune_learning_rate or config.learning_rate / 10.0, config.optimizer,
                            trunk_inference=True))
    return phases


def history_of(previous_info: Optional[dict]) -> List[dict]:
    """The phases recorded by the run in model_dir (older runs recorded flags only)."""
    if not previous_info or previous_info.get("dry_run"):
        return []
    if previous_info.get("phases"):
        return list(previous_info["phases"])
    flags = previous_info.get("flags") or {}
    if not flags:
        return []
    known = {f.name for f in dataclasses.fields(Config)}
    before = dataclasses.replace(Config(), **{k: v for k, v in flags.items() if k in known})
    return [Phase("train", 0, before.train_steps, before.freeze or models.default_freeze(before),
                  before.learning_rate, before.optimizer).record()]


def schedule(config: Config, learning_rate: float, first_step: int, last_step: int):
    """The phase's learning rate as a function of the global step (trainer.schedules)."""
    from trainer.schedules import PhaseSchedule

    return PhaseSchedule(learning_rate, first_step, last_step, config.lr_schedule, config.warmup_steps,
                         config.min_learning_rate, config.lr_decay_rate, config.lr_decay_steps)


@dataclasses.dataclass
class Step:
    """One phase to train in this process."""

    phase: Phase
    first_step: int  # Where this phase's schedule starts (its recorded start).
    restart_optimizer: bool  # A boundary: fresh optimizer state before training.


def resolve(planned: List[Phase], history: List[dict], step: int,
            fresh_at_boundary: bool = False) -> (List[Step], List[dict]):
    """Which phases to train from global `step`, and the phase history to record.

    `fresh_at_boundary`: the latest checkpoint is a phase start already rewritten (phase.ckpt-N).

    Returns:
        (steps, history): the phases still to train (with where each one's schedule starts
        and whether it begins with a fresh optimizer state), and the updated history.
    """
    history = [dict(h) for h in history]
    todo = []
    for phase in planned:
        if phase.last_step <= step:
            continue
        start = max(phase.first_step, step)
        current = history[-1] if history else None
        same = current is not None and str(current.get("name")).split(" (")[0] == phase.name and (
            current.get("optimizer"), float(current.get("learning_rate", -1)), str(current.get("freeze"))
        ) == phase.recipe()
        if step == 0 and not todo:
            restart, first = False, 0  # A fresh run: nothing to carry over.
            history = [phase.record()] if not same else history
        elif same and not todo:
            first = int(current["first_step"])
            # Killed right at a boundary, before its rewrite: the checkpoint still holds the old state.
            restart = step == first and first > 0 and not fresh_at_boundary
            current["last_step"] = phase.last_step
        else:
            restart, first = True, start
            name = phase.name if start == phase.first_step else f"{phase.name} (flags changed at step {start})"
            history.append(dataclasses.replace(phase, name=name, first_step=start).record())
            if name != phase.name:
                logging.warning("resuming at step %d with another recipe (%s): a new training phase starts, with "
                                "the weights kept and a fresh optimizer state", start, _describe(current, phase))
        todo.append(Step(phase, first, restart))
    return todo, history


def _describe(current: Optional[dict], phase: Phase) -> str:
    if not current:
        return "no recorded phase"
    changes = [f"--{k}={getattr(phase, k)} (was {current.get(k)})" for k in ("optimizer", "learning_rate", "freeze")
               if str(current.get(k)) != str(getattr(phase, k))]
    return ", ".join(changes) or "same flags"


def restart_optimizer_state(model_fn: Callable, run_config, model: tf.keras.Model, input_fn: Callable,
                            checkpoint_dir: str, step: int) -> str:
    """Rewrites the latest checkpoint for a new phase: weights kept, optimizer state fresh.

    The new phase's training graph is built once (its model_fn over placeholders shaped like its
    input); every variable that is a model weight (or the global step) takes the checkpoint's
    value (or, when the checkpoint lacks it, the Keras model's), everything else (optimizer slots
    and hyperparameters) its initial value. The result is saved as `phase.ckpt-<step>` and made
    the latest checkpoint in one atomic update of the state file, so a kill at any moment leaves
    either the old or the new latest checkpoint.
    """
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    reader = tf.train.load_checkpoint(latest) if latest else None
    saved = reader.get_variable_to_shape_map() if reader else {}
    keras_values = {w.name.split(":")[0]: w.numpy() for w in model.weights}
    graph = tf.Graph()
    with graph.as_default():
        spec = input_fn().element_spec
        features, labels = tf.nest.map_structure(
            lambda s: tf.compat.v1.placeholder(s.dtype, s.shape), spec)
        model_fn(features, labels, tf.estimator.ModeKeys.TRAIN, run_config)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        # Under MirroredStrategy each replica has its own optimizer slots, saved as `<slot>/replica_<k>`:
        # fresh ones are copies of the first replica's initial values (restore ignores keys it does not need).
        strategy = getattr(run_config, "train_distribute", None)
        replicas = getattr(strategy, "num_replicas_in_sync", 1) if strategy is not None else 1
        for name, variable in list(variables.items()):
            if name in keras_values or name == "global_step":
                continue
            for k in range(1, replicas):
                variables[f"{name}/replica_{k}"] = tf.compat.v1.Variable(
                    variable.initial_value, trainable=False, name=f"{name}/replica_{k}".replace("/", "_"))
        init = tf.compat.v1.global_variables_initializer()
        saver = tf.compat.v1.train.Saver(var_list=variables, sharded=True)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(init)
            for name, variable in variables.items():
                if name in saved and (name in keras_values or name == "global_step"):
                    variable.load(reader.get_tensor(name), session)
                elif name in keras_values:
                    variable.load(keras_values[name], session)
            if "global_step" in variables:
                variables["global_step"].load(step, session)
            path = saver.save(session, os.path.join(checkpoint_dir, "phase.ckpt"), global_step=step,
                              write_meta_graph=False)
    kept = sum(1 for n in variables if n in saved and n in keras_values)  # noqa: F841 - logged below.
    logging.info("new phase at step %d: %d weights kept, %d optimizer variables fresh (%s)", step, kept,
                 sum(1 for n in variables if n not in keras_values and n != "global_step"), path)
    return path


def write_ready_marker(checkpoint_dir: str, first_step: int) -> None:
    files.write_json(os.path.join(checkpoint_dir, f"phase-{first_step}.ready"), {"first_step": first_step})


def wait_ready_marker(checkpoint_dir: str, first_step: int, timeout: float = 600) -> None:
    """Non-chief tasks wait for the chief's rewrite of the checkpoint before a phase starting at `first_step`."""
    import time

    path = os.path.join(checkpoint_dir, f"phase-{first_step}.ready")
    deadline = time.time() + timeout
    while not tf.io.gfile.exists(path):
        if time.time() > deadline:
            raise RuntimeError(f"the chief did not start the phase at step {first_step} within {timeout} s")
        time.sleep(0.5)


def prepare(config, dist, dataset, model, run_info, info_path):
    """The phases still to train from the latest checkpoint, recorded in run_info.json."""
    train_examples = len(dataset.train) if dataset.train.known_size else None
    planned = plan(config, train_examples)
    if train_examples:
        run_info["steps_per_epoch"] = math.ceil(train_examples / config.batch_size)
    run_info["train_steps"] = planned[-1].last_step
    run_info["class_weights"] = class_weights.resolve(config, dataset)
    # Every task reads it: they must agree on the phases (workers may read it after the chief rewrote it,
    # which gives the same answer: see resolve).
    previous = files.read_json(info_path)
    latest = tf.train.latest_checkpoint(config.checkpoint_dir)
    step = int(latest.rsplit("-", 1)[1]) if latest else 0
    fresh = bool(latest) and os.path.basename(latest).startswith("phase.ckpt")
    steps, history = resolve(planned, history_of(previous), step, fresh)
    if (len(planned) > 1 or any(s.restart_optimizer for s in steps)) and dist.name == "tpu":
        raise UsageError("training phases (--fine_tune_steps, or resuming with another --optimizer, "
                         "--learning_rate or --freeze) are not supported with --strategy=tpu yet")
    for record in history:  # The phase this process starts in, when it trains the model as built.
        if steps and record["first_step"] == steps[0].first_step and not record.get("trainable_params") \
                and not steps[0].restart_optimizer:
            record["trainable_params"] = models.summarize(model)["trainable_params"]
    run_info["phases"] = history
    if dist.is_chief:
        files.write_json(info_path, run_info)
    return steps


def model_for(config, num_classes, image_shape, phase, model):
    """The model as this phase trains it (its freezing; BatchNorm in inference mode when fine-tuning)."""
    if phase.freeze == (config.freeze or models.default_freeze(config)) and not phase.trunk_inference:
        return model
    tf.keras.backend.clear_session()  # The same variable names as the first phase's model.
    tf.keras.utils.set_random_seed(config.seed)
    return models.build_model(config, num_classes, image_shape, freeze_spec=phase.freeze,
                              trunk_inference=phase.trunk_inference)


def start(config, dist, estimator, model, train_input_fn, step, run_info, info_path):
    """A phase boundary: the chief rewrites the latest checkpoint with a fresh optimizer state."""
    trainable = models.summarize(model)["trainable_params"]
    for record in run_info["phases"]:
        if record["first_step"] == step.first_step:
            record["trainable_params"] = trainable
    if dist.is_chief:
        restart_optimizer_state(estimator.model_fn, estimator.config, model, train_input_fn,
                                       config.checkpoint_dir, step.first_step)
        files.write_json(info_path, run_info)
        write_ready_marker(config.checkpoint_dir, step.first_step)
    else:
        wait_ready_marker(config.checkpoint_dir, step.first_step)
