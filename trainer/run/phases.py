"""Training phases: head training, then fine-tuning, and any resume that changes the recipe.

A phase is a span of global steps trained with one recipe: the optimizer, the learning rate and
its schedule, the freezing, and every other flag that shapes the training step (label smoothing,
class weights, weight decay, clipping, batch size, augmentation, dropout). Each phase runs its own
Estimator over the same model_dir. At a phase boundary the latest checkpoint is rewritten with the
model's weights (and BatchNorm statistics, and the global step) and a *fresh* optimizer state for
the new graph: optimizer slots exist only for what was trainable, so restoring the old state would
fail (more trainable variables) or carry stale moments.

Restarts give the run that was never interrupted, by construction:
- the plan (`plan`) is a pure function of the flags (and the number of training examples);
- `run_info.json`'s `phases` records only phases that started, each written right *after* its
  boundary checkpoint (`phase.ckpt-N`) became the latest one: a record is the commit mark of its
  boundary, so a kill at any instant leaves either no record (the boundary is done again, which is
  idempotent) or a record whose checkpoint is in place;
- on every start, the phase the latest checkpoint's step falls in (`resolve`) decides the model,
  its freezing, the optimizer and the schedule (whose origin is the phase's recorded first step).
A resume whose flags give another recipe than the recorded phase starts a new, recorded phase at
the checkpoint's step (with a console line); flags that define the model itself are refused by
`experiment.check_model_dir`.
"""
import contextlib
import dataclasses
import json
import math
import os
from typing import Callable, List, Optional, Tuple

import tensorflow as tf
from absl import logging

from trainer.util import console
from trainer.util import faultpoints
from trainer.util import files
from trainer.model import models
from trainer.config import Config, show_value
from trainer.errors import UsageError

# What a phase's record says besides its name and steps (run_info.json `phases`), in this order.
RECIPE_KEYS = ("optimizer", "learning_rate", "freeze", "trunk_inference", "lr_schedule", "warmup_steps",
               "min_learning_rate", "lr_decay_rate", "lr_decay_steps", "label_smoothing", "class_weights",
               "weight_decay", "clip_norm", "batch_size", "augment", "dropout", "layer_lr_decay", "ema_decay",
               "ema_warmup")


def _canonical(value):
    """A JSON-shaped value (tuples become lists, ints that are floats stay comparable)."""
    return json.loads(json.dumps(value))


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    first_step: int
    last_step: int
    recipe: Tuple[Tuple[str, object], ...] = ()

    def get(self, key: str):
        return dict(self.recipe).get(key)

    @property
    def freeze(self) -> str:
        return self.get("freeze")

    @property
    def learning_rate(self) -> float:
        return self.get("learning_rate")

    @property
    def optimizer(self) -> str:
        return self.get("optimizer")

    @property
    def trunk_inference(self) -> bool:
        return bool(self.get("trunk_inference"))

    def record(self, trainable_params: Optional[int] = None) -> dict:
        return {"name": self.name, "first_step": self.first_step, "last_step": self.last_step,
                **dict(self.recipe), "trainable_params": trainable_params}


def _recipe(config: Config, weights: Optional[list], **phase) -> Tuple[Tuple[str, object], ...]:
    """The recipe of a phase: its own values (`phase`) and those every phase shares."""
    shared = {"optimizer": config.optimizer, "lr_schedule": config.lr_schedule,
              "warmup_steps": config.warmup_steps, "label_smoothing": config.label_smoothing,
              "class_weights": weights, "weight_decay": config.weight_decay, "clip_norm": config.clip_norm,
              "batch_size": config.batch_size, "augment": config.augment, "dropout": config.dropout,
              "ema_decay": config.ema_decay}
    if config.ema_decay:
        shared["ema_warmup"] = config.ema_warmup
    # Only the schedule's own parameters: a changed --lr_decay_rate under a constant rate changes nothing.
    if config.lr_schedule == "cosine":
        shared["min_learning_rate"] = config.min_learning_rate
    if config.lr_schedule in ("exponential", "step"):
        shared.update(lr_decay_rate=config.lr_decay_rate, lr_decay_steps=config.lr_decay_steps)
    values = _canonical({**shared, **phase})
    return tuple((k, values[k]) for k in RECIPE_KEYS if k in values)


def steps_for(epochs: float, examples: Optional[int], batch_size: int, flag: str) -> int:
    if examples is None:
        raise UsageError(f"--{flag}={epochs} needs the number of training examples, unknown for TFRecords read "
                         "with --labels_file; give steps instead")
    return max(1, math.ceil(epochs * examples / batch_size))


def plan(config: Config, train_examples: Optional[int], weights: Optional[list] = None) -> List[Phase]:
    """The phases the flags ask for: training, then fine-tuning when --fine_tune_steps/epochs is set.

    A pure function of the flags, the number of training examples and the resolved class weights.
    """
    train_steps = (steps_for(config.epochs, train_examples, config.batch_size, "epochs") if config.epochs
                   else config.train_steps)
    phases = [Phase("train", 0, train_steps, _recipe(
        config, weights, learning_rate=config.learning_rate, freeze=config.freeze or models.default_freeze(config),
        trunk_inference=False))]
    tune = config.fine_tune_steps or (steps_for(config.fine_tune_epochs, train_examples, config.batch_size,
                                                "fine_tune_epochs") if config.fine_tune_epochs else 0)
    if tune:
        phases.append(Phase("fine_tune", train_steps, train_steps + tune, _recipe(
            config, weights, learning_rate=fine_tune_rate(config), freeze=config.fine_tune_freeze,
            trunk_inference=True, layer_lr_decay=config.layer_lr_decay)))
    return phases


def fine_tune_rate(config: Config) -> float:
    return config.fine_tune_learning_rate or config.learning_rate / 10.0


def history_of(previous_info: Optional[dict]) -> List[dict]:
    """The phases recorded by the run in model_dir (older runs recorded flags only)."""
    if not previous_info or previous_info.get("dry_run"):
        return []
    if "phases" in previous_info:
        # All or nothing (SRE trial 2026-12-04 B3): a history with one record garbled or left out would make the
        # checkpoint's phase look new (optimizer state and schedule restarted); none at all is rebuilt from the plan.
        records = previous_info["phases"]
        if isinstance(records, list) and all(
                isinstance(p, dict) and type(p.get("first_step")) is int and type(p.get("last_step")) is int
                and isinstance(p.get("name"), str) for p in records):
            return [dict(p) for p in records]
        return []
    flags = previous_info.get("flags") or {}
    if not flags:
        return []
    before = Config.from_dict(flags)
    return [{"name": "train", "first_step": 0, "last_step": before.train_steps, "optimizer": before.optimizer,
             "learning_rate": before.learning_rate, "freeze": before.freeze or models.default_freeze(before)}]


def base_name(record_name) -> str:
    return str(record_name).split(" (")[0]


def differences(record: dict, phase: Phase) -> List[str]:
    """The recipe values of `phase` that differ from a recorded phase's (keys an older record lacks: equal)."""
    changes = []
    for key, value in phase.recipe:
        if key not in record:
            continue
        before = _canonical(record[key])
        if isinstance(value, (int, float)) and isinstance(before, (int, float)) and not isinstance(value, bool):
            same = float(value) == float(before)
        else:
            same = before == value
        if not same:
            changes.append(f"--{_flag_of(key, phase.name)}={show_value(value)} (was {show_value(before)})")
    return changes


def _flag_of(key: str, phase_name: str) -> str:
    if base_name(phase_name) == "fine_tune" and key in ("learning_rate", "freeze"):
        return f"fine_tune_{key}"
    return {"class_weights": "class_weight"}.get(key, key)


@dataclasses.dataclass
class Step:
    """One phase to train in this process."""

    phase: Phase  # Its name and first step are those it is recorded (or will be recorded) with.
    restart_optimizer: bool  # A boundary: the checkpoint is rewritten with a fresh optimizer state, then recorded.
    changes: Tuple[str, ...] = ()  # For a phase started by changed flags: what changed.

    @property
    def first_step(self) -> int:
        return self.phase.first_step


def resolve(planned: List[Phase], history: List[dict], step: int,
            has_checkpoint: bool) -> Tuple[List[Step], List[dict]]:
    """Which phases to train from the latest checkpoint's global `step`, and the history as it stands.

    Returns:
        (steps, history): the phases still to train, each with whether it begins at a boundary (a fresh
        optimizer state, recorded by `start` once the boundary checkpoint is in place), and the recorded
        phases that the checkpoint has reached (the current one's planned end updated).
    """
    if not has_checkpoint:
        history = []  # Nothing trained: whatever was recorded has no weights behind it.
    # A record past the checkpoint (one fell back to an older checkpoint) describes steps that are gone.
    history = [dict(h) for h in history if int(h["first_step"]) <= step]
    if has_checkpoint and history and not _accounts_for(history, step):
        logging.warning("the phase history in run_info.json (%s) does not account for the checkpoint at step %d",
                        ", ".join(f"{h['name']} {h['first_step']}..{h['last_step']}" for h in history), step)
        history = []
    if has_checkpoint and not history:
        # A checkpoint without its history (run_info.json deleted or damaged): the flags' plan is the best
        # account of how the checkpoint was made. Past a planned boundary, that boundary happened.
        history = [p.record() for p in planned if p.first_step < step or p.first_step == 0]
        logging.warning("no phase history for the checkpoint at step %d: assuming the phases the flags plan (%s)",
                        step, ", ".join(f"{r['name']} {r['first_step']}..{r['last_step']}" for r in history))
    current = history[-1] if history else None
    todo: List[Step] = []
    for phase in planned:
        if phase.last_step <= step:
            continue
        if todo:  # Later phases start at their planned boundary.
            todo.append(Step(phase, restart_optimizer=True))
            continue
        if current is not None and base_name(current.get("name")) == phase.name and not differences(current, phase):
            # The phase the checkpoint is in, with the same recipe: go on with its optimizer state and schedule.
            # At its very first step the checkpoint may still be the previous phase's (a fallback from a damaged
            # phase.ckpt-N, or a folder of an older version that recorded phases in advance): the rewrite is
            # done again, which is idempotent there (no step of the phase has trained).
            first = int(current["first_step"])
            current["last_step"] = phase.last_step
            todo.append(Step(dataclasses.replace(phase, name=current["name"], first_step=first),
                             restart_optimizer=0 < first == step))
        elif not has_checkpoint:
            history = [phase.record()]  # A fresh run: recorded before it trains.
            todo.append(Step(phase, restart_optimizer=False))
        else:
            changes = tuple(differences(current, phase)) if current and base_name(current.get("name")) == \
                phase.name else ()
            name = phase.name if step == phase.first_step or not changes else \
                f"{phase.name} (flags changed at step {step})"
            todo.append(Step(dataclasses.replace(phase, name=name, first_step=step), restart_optimizer=True,
                             changes=changes))
    return todo, history


def _accounts_for(history: List[dict], step: int) -> bool:
    """A history that can describe a checkpoint at `step`: from step 0, in order, the last record reaching it."""
    firsts = [int(h["first_step"]) for h in history]
    return firsts[0] == 0 and firsts == sorted(set(firsts)) and int(history[-1]["last_step"]) >= step


def check_freeze(config: Config, planned: List[Phase], model: tf.keras.Model) -> None:
    """Every phase's freezing fits the trunk, and --freeze flags are not given where nothing obeys them."""
    if config.model_fn:
        for flag, value, default in (("freeze", config.freeze, None), ("fine_tune_freeze", config.fine_tune_freeze,
                                                                        "none")):
            if value != default:
                raise UsageError(f"--{flag}={value} freezes layers of a built-in model's trunk; a --model_fn model "
                                 "has none: set layer.trainable in your function instead")
        return
    trunk = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    if not trunk:
        return
    for phase in planned:
        models.check_freeze_spec(len(models.freeze_units(trunk[-1])), phase.freeze,
                                 "fine_tune_freeze" if phase.name == "fine_tune" else "freeze")


def schedule(config: Config, learning_rate: float, first_step: int, last_step: int):
    """The phase's learning rate as a function of the global step (trainer.model.schedules)."""
    from trainer.model.schedules import PhaseSchedule

    return PhaseSchedule(learning_rate, first_step, last_step, config.lr_schedule, config.warmup_steps,
                         config.min_learning_rate, config.lr_decay_rate, config.lr_decay_steps)


def write_ready_marker(checkpoint_dir: str, first_step: int) -> None:
    files.write_json(os.path.join(checkpoint_dir, f"phase-{first_step}.ready"), {"first_step": first_step})


def wait_ready_marker(checkpoint_dir: str, first_step: int, timeout: float = 600) -> None:
    """Non-chief tasks wait for the chief's rewrite of the checkpoint before a phase starting at `first_step`."""
    import time

    path = os.path.join(checkpoint_dir, f"phase-{first_step}.ready")
    deadline = time.time() + timeout
    while not tf.io.gfile.exists(path):
        if time.time() > deadline:
            raise UsageError(f"the chief did not start the phase at step {first_step} within {timeout} s (is the "
                             "chief task running?)")
        time.sleep(0.5)


def prepare(config: Config, dist, planned: List[Phase], run_info: dict, info_path: str,
            train_examples: Optional[int]) -> List[Step]:
    """The phases still to train from the latest checkpoint; the history so far goes into run_info."""
    if train_examples:
        run_info["steps_per_epoch"] = math.ceil(train_examples / config.batch_size)
    run_info["train_steps"] = planned[-1].last_step
    run_info["plan"] = [{"name": p.name, "first_step": p.first_step, "last_step": p.last_step} for p in planned]
    # Every task reads it and must reach the same answer; a worker reading it after the chief recorded a
    # boundary finds that phase recorded, and its checkpoint in place.
    previous = files.read_run_info(os.path.dirname(info_path))
    latest = tf.train.latest_checkpoint(config.checkpoint_dir)
    step = int(latest.rsplit("-", 1)[1]) if latest else 0
    steps, history = resolve(planned, history_of(previous), step, bool(latest))
    run_info["phases"] = history
    if not steps and latest:
        console.say("nothing to train: the checkpoint in %s is at step %d and the flags plan %d steps",
                    config.checkpoint_dir, step, planned[-1].last_step)
        _say_unused_changes(config, history, planned[-1], previous, run_info)
    return steps


def _say_unused_changes(config: Config, history: List[dict], last: Phase, previous: Optional[dict],
                        run_info: dict) -> None:
    """A rerun that trains nothing with changed recipe flags: they change nothing, and the record keeps what the
    run trained with (newcomer pass 2026-12-05: run_info.json's flags, and report.html, took the new values)."""
    current = history[-1] if history else None
    if current is None or base_name(current.get("name")) != last.name:
        return
    changed = differences(current, last)
    if not changed:
        return
    console.say("%s: no effect, every step is trained; the run's record keeps what it trained with (to train with "
                "them, use a new --model_dir with --warm_start_from=%s)", ", ".join(changed), config.model_dir)
    recorded = (previous or {}).get("flags") or {}
    for change in changed:
        flag = change[2:].split("=", 1)[0]
        if flag in recorded and flag in run_info.get("flags", {}):
            run_info["flags"][flag] = recorded[flag]


def model_for(config: Config, num_classes: int, image_shape, phase: Phase, model: tf.keras.Model,
              built: tuple, scope=contextlib.nullcontext) -> Tuple[tf.keras.Model, tuple]:
    """The model as `phase` trains it: its freezing, BatchNorm in inference mode when fine-tuning.

    `built` is (freeze, trunk_inference) of `model`; the model is rebuilt only when the phase wants others.
    """
    wanted = (phase.freeze, phase.trunk_inference)
    if wanted == built:
        return model, built
    tf.keras.backend.clear_session()  # The same variable names as the first phase's model.
    tf.keras.utils.set_random_seed(config.seed)
    with scope():  # After clear_session, which resets it: the engine's strategy owns the variables.
        return models.build_model(config, num_classes, image_shape, freeze_spec=phase.freeze,
                                  trunk_inference=phase.trunk_inference), wanted


def start(config: Config, dist, rewrite: Callable[[int], str], model: tf.keras.Model, step: Step,
          run_info: dict, info_path: str) -> None:
    """Enters a phase. At a boundary the chief rewrites the latest checkpoint (fresh optimizer state; the
    engine's `rewrite(first_step)`), then records the phase: the record is the boundary's commit mark."""
    trainable = models.summarize(model)["trainable_params"]
    first = step.first_step
    if not step.restart_optimizer:
        for record in run_info["phases"]:
            if record["first_step"] == first and not record.get("trainable_params"):
                record["trainable_params"] = trainable
        if dist.is_chief:
            files.write_json(info_path, run_info)
        return
    if step.changes:
        logging.warning("resuming at step %d with another recipe (%s): a new training phase starts, with the "
                     "weights kept and a fresh optimizer state", first, ", ".join(step.changes))
    before = [dict(r, last_step=min(int(r["last_step"]), first)) for r in run_info["phases"]
              if int(r["first_step"]) < first]
    run_info["phases"] = before + [step.phase.record(trainable)]
    if dist.is_chief:
        marker = os.path.join(config.checkpoint_dir, f"phase-{first}.ready")
        if tf.io.gfile.exists(marker):  # Of an earlier attempt at this boundary: workers must wait for this one.
            tf.io.gfile.remove(marker)
        faultpoints.reached("phase_before_rewrite")
        rewrite(first)
        faultpoints.reached("phase_after_rewrite")
        files.write_json(info_path, run_info)
        faultpoints.reached("phase_after_record")
        write_ready_marker(config.checkpoint_dir, first)
    else:
        wait_ready_marker(config.checkpoint_dir, first)


def warn_unused(config: Config, planned: List[Phase]) -> None:
    """Console lines for recipe flags that this plan leaves without effect (they are not errors)."""
    if len(planned) == 1:
        unused = [f"--{f}" for f, default in (("fine_tune_learning_rate", None), ("fine_tune_freeze", "none"),
                                              ("layer_lr_decay", 1.0))
                  if getattr(config, f) != default]
        if unused:
            logging.warning("%s ignored: there is no fine-tuning phase (give --fine_tune_steps or "
                            "--fine_tune_epochs)", " and ".join(unused))
    if len(planned) > 1 and planned[-1].freeze == "all" and not config.cache_features:  # Trial c147.
        logging.warning("--fine_tune_freeze=all keeps the whole trunk frozen: the fine-tune phase trains the head "
                        "only, like the first (give none, N or -N to fine-tune the trunk)")
    if not config.ema_warmup and not config.ema_decay:  # Newcomer pass 2026-12-05.
        logging.warning("--noema_warmup ignored: there is no average (give --ema_decay)")
    if config.early_stopping_min_delta and not config.early_stopping_patience:
        logging.warning("--early_stopping_min_delta ignored: early stopping is off (give --early_stopping_patience)")
    for phase in planned:
        if config.warmup_steps >= phase.last_step - phase.first_step:
            logging.warning("--warmup_steps=%d covers the whole %s phase (%d steps): its rate never reaches %g",
                            config.warmup_steps, phase.name, phase.last_step - phase.first_step, phase.learning_rate)
