"""Stage 1 of a run: the flags and the data checked, the model built, the plan of phases resolved from the
flags and the checkpoint, run_info.json's fields, the console header. Everything a user can get wrong is
refused here, before an engine builds anything and before any file is written (a refused run leaves its
folder as it was)."""
import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, List, Optional

import tensorflow as tf
from absl import logging

from trainer.config import DEFAULT_LOSS, Config, resolve_engine, show_value
from trainer.data import inputs, record_faults
from trainer.data import sources as data_lib
from trainer.errors import UsageError
from trainer.model import class_weights, feature_cache, keras_files, layer_rates, models
from trainer.outputs import metrics
from trainer.retrain import promotion
from trainer.run import checkpoints, distribution, phases
from trainer.util import console, files


@dataclasses.dataclass
class Run:
    """What the stages of one run share: set by `prepare`, the inputs from the engine's, the model by each phase.
    Only the stages write it."""
    config: Config
    plan: distribution.Plan
    dataset: data_lib.Dataset
    num_classes: int
    image_shape: Optional[tuple]
    model: tf.keras.Model  # As the current phase trains it (a cached run's head, once the engine cached).
    class_names: List[str]
    planned: List[phases.Phase]
    run_info: dict
    info_path: str
    model_summary: dict
    built: tuple  # (freeze, trunk_inference) `model` was built with.
    steps: List[phases.Step] = dataclasses.field(default_factory=list)  # The phases still to train.
    started: float = 0.0
    make_input: Optional[Callable] = None  # (split, training) -> input_fn.
    full_model: Optional[tf.keras.Model] = None  # Images in (a cached run's model is its head).
    train_input: Optional[Callable] = None
    eval_input: Optional[Callable] = None
    cache: object = None  # The engine's feature cache (--cache_features), else None.
    dry_run_summary: Optional[dict] = None


def prepare(config: Config, plan: distribution.Plan, engine) -> Run:
    """Checks, builds and resolves everything before training; with --dry_run, records the plan and stops."""
    dataset, num_classes = _load_data(config)
    _check_metric_names(config, num_classes)
    per_replica_batch = _per_replica_batch(config, plan)
    model, image_shape = _build_model(config, dataset, num_classes, engine.scope)
    summary = models.summarize(model)
    if config.cache_features:  # What --cache_features needs of the model and the distribution.
        feature_cache.check_supported(config, plan, model)
    logging.info("model: %d params, %d trainable, %d non-trainable", summary["total_params"],
                 summary["trainable_params"], summary["non_trainable_params"])
    class_names = dataset.class_names if dataset else [str(i) for i in range(num_classes)]
    # The plan (a pure function of the flags and the data) and each phase's freezing: checked before any file.
    train_examples = len(dataset.train) if dataset and dataset.train.known_size else None
    weights = class_weights.resolve(config, dataset) if dataset else None
    planned = phases.plan(config, train_examples, weights)
    phases.check_freeze(config, planned, model)
    if plan.is_chief:
        phases.warn_unused(config, planned)
    if plan.is_chief and not config.dry_run:  # A damaged latest checkpoint or state file: the newest readable one.
        checkpoints.recover(config.checkpoint_dir)
    latest = None if config.dry_run else tf.train.latest_checkpoint(config.checkpoint_dir)
    warm_start = None
    # A cached run's checkpoints hold the head only, so its trunk comes from the warm start on every start
    # (elsewhere a resumed run's weights all come from its checkpoint).
    if config.warm_start_from and plan.is_chief and not config.dry_run and (config.cache_features or not latest):
        warm_start = promotion.apply_warm_start(model, config, class_names)
    if plan.is_chief:
        if not config.dry_run:  # Before anything is written: a refused run leaves the folder as it was.
            # With --cache_features the checkpoints hold the head only.
            check_model_dir(config, feature_cache.split(model)[1] if config.cache_features else model, class_names,
                            model, recipe_fixed=plan.name in engine.recipe_fixed_under)
            if latest and config.cache_features:
                feature_cache.check_checkpoint_trunk(model, latest, config.model_dir)
        files.write_json(os.path.join(config.model_dir, "model_summary.json"), summary)
    # After the model_dir checks: a refused resume is its one error line (wrappers trial U3).
    if config.mixed_precision and not tf.config.list_physical_devices("GPU"):  # Trial c193: silent on a CPU.
        logging.warning("--mixed_precision on a machine without a GPU: float16 compute is slower on CPUs (meant "
                        "for GPUs with tensor cores); the run goes on")
    _warn_empty_classes(dataset)
    run_info = {
        "flags": config.to_dict(), "engine": config.engine, "tf_version": tf.__version__,
        "keras_version": keras_files.keras_version(), "strategy": plan.name,
        "num_replicas": plan.num_replicas, "per_replica_batch_size": per_replica_batch,
        "estimator": engine.describe(), "num_classes": num_classes,
        "class_names": class_names,
        "counts": dataset.counts() if dataset else {},
        "skipped_files": dataset.skipped_files if dataset else [], "dry_run": config.dry_run,
        "ignored_files": dataset.ignored_files if dataset else {},
        "skipped_records": record_faults.restore(dataset, config.model_dir),
        "input_shape": _input_shape(model), "class_weights": weights,
        # Where relative paths in `flags` were given from: `trainer.champion promote` run elsewhere reads them.
        "working_dir": os.getcwd(),
    }
    run = Run(config, plan, dataset, num_classes, image_shape, model, class_names, planned, run_info,
              os.path.join(config.model_dir, "run_info.json"), summary, (planned[0].freeze, False), full_model=model)
    console.header(config.model_dir, run_info, summary, int(latest.rsplit("-", 1)[1]) if latest else None,
                   planned[-1].last_step)
    if config.dry_run:  # What the flags plan, resolved (--epochs included).
        run_info.update(train_steps=planned[-1].last_step, plan=[_resolved(run, p) for p in planned])
        path = run.info_path
        if _holds_a_run(path):  # SRE trial W2: a dry run replaced a finished (or live) run's record.
            path = os.path.join(config.model_dir, "dry_run.json")
            console.say("dry run: %s belongs to a run; the plan is written to %s", run.info_path, path)
        files.write_json(path, run_info)
        for record in run_info["plan"]:  # Newcomer pass 2026-12-05: the resolved recipe was in the file only.
            console.say("plan: %s", _plan_line(record))
        console.say("dry run: the plan, resolved, is in %s (`plan`)", path)
        run.dry_run_summary = {"dry_run": True, "model_dir": config.model_dir, **{k: summary[k] for k in (
            "total_params", "trainable_params", "non_trainable_params")}}
        return run
    if warm_start is not None:
        run_info["warm_start"], run_info["warm_start_from"] = warm_start, warm_start.get("path")
    run.make_input = _input_maker(config, plan, dataset, model, num_classes, engine.input_batch_size(per_replica_batch),
                                  resumes=plan.name in engine.resumes_input_under, autotune=engine.autotunes_input)
    if not plan.is_chief and engine.chief_writes_first:  # Before reading the phase history: the chief starts first.
        checkpoints.wait_for_chief(config.checkpoint_dir, engine.chief_writes_first)
    if plan.is_chief:  # Left by a run killed mid-write (or by a full disk). In a cluster the evaluator task may be
        # exporting as the chief starts (a rerun: both start together): its fresh temp-* folder is spared.
        spare = 120 if plan.distributed else 0
        files.remove_temporaries(config.model_dir, spare)
        if config.checkpoint_dir != config.model_dir:
            files.remove_temporaries(config.checkpoint_dir, spare)
    run.started = time.time()
    # Reads the phase history; run_info.json is written when each phase starts (phases.start).
    run.steps = phases.prepare(config, plan, planned, run_info, run.info_path, train_examples)
    return run


def _build_model(config: Config, dataset, num_classes: int, scope=contextlib.nullcontext):
    # Fresh Keras name counters: checkpoints name variables after layers, so the same
    # flags must give the same names in every process and every call.
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.seed)
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    image_shape = dataset.image_shape if dataset else None
    with scope():  # Entered after clear_session, which resets it. The Keras engine's strategy owns the variables.
        model = models.build_model(config, num_classes, image_shape)
    if config.model_fn and image_shape and len(model.inputs) == 1:  # Trial c069/c070: a 77-line traceback.
        expected = tuple(model.input_shape[1:])
        if len(expected) == len(image_shape) and any(e not in (None, d) for e, d in zip(expected, image_shape)):
            raise UsageError(f"--model_fn={config.model_fn} takes inputs of shape {expected}, but --data={config.data} "
                             f"holds {tuple(image_shape)}: make the model's Input shape {tuple(image_shape)}")
    with scope():
        models.compile_model(model, config)
    return model, image_shape


def _warn_empty_classes(dataset) -> None:
    if dataset and dataset.train.known_size:  # Trial c209: a class with no training example went unsaid.
        present = dataset.counts().get("train", {})
        empty = [n for n in dataset.class_names if not present.get(n)]
        if empty:
            logging.warning("class(es) %s have no training example (all went to validation): the model cannot "
                            "learn them; add images or lower --validation_split", ", ".join(empty[:10]))


def _plan_line(record: dict) -> str:
    """A planned phase in one console line: its steps, and the recipe values a user sets most."""
    shown = [f"{record['optimizer']} at {record['learning_rate']:g}", f"freeze {record['freeze']}"]
    if record.get("augment"):
        shown.append(f"augment {show_value(record['augment'])}")
    if record.get("ema_decay"):
        shown.append(f"ema_decay {record['ema_decay']:g}" + ("" if record.get("ema_warmup", True) else " (no warmup)"))
    if (record.get("layer_lr_decay") or 1.0) != 1.0:
        shown.append(f"layer_lr_decay {record['layer_lr_decay']:g}")
    return f"{record['name']} steps {record['first_step']}..{record['last_step']}: {', '.join(shown)}"


def _resolved(run: "Run", phase) -> dict:
    """A planned phase for --dry_run: its steps and recipe as resolved (--augment's amounts, --ema_decay, ...), and
    under --layer_lr_decay each trained trunk layer's share of the phase's learning rate (the phase's model is
    built for it)."""
    record = {k: v for k, v in phase.record().items() if k != "trainable_params"}
    decay = phase.get("layer_lr_decay") or 1.0
    if decay != 1.0 and not run.config.cache_features:
        model, _ = phases.model_for(run.config, run.num_classes, run.image_shape, phase, run.model, run.built)
        shares = {}
        for variable, share in layer_rates.factors(model, decay).items():
            shares[variable.rsplit("/", 1)[0]] = share
        record["layer_learning_rates"] = {layer: phase.learning_rate * share for layer, share in shares.items()}
    return record


def _input_maker(config: Config, plan, dataset, model: tf.keras.Model, num_classes: int, train_batch: int,
                 resumes: bool, autotune: bool):
    size = None if config.model_fn else model.input_shape[1]
    input_names, output_names = model.input_names, model.output_names  # The full model's (images in).

    def make_input(split, training):
        # One device: after a restart the shuffled stream goes on where it was (not from its start again).
        # So does Model.fit's under MirroredStrategy: it splits each global batch in order over the replicas.
        # And under MultiWorkerMirroredStrategy: on the Keras engine each task skips the same global stream before it
        # is sharded, on the Estimator's its own shard's stream, one batch per step (a cluster Vertex restarts whole
        # ends as the uninterrupted one: tests/test_cluster_restart.py).
        resume = (lambda: checkpoints.latest_step(config.checkpoint_dir)) if training and resumes else None
        return inputs.make_input_fn(
            split, training=training, batch_size=train_batch if training else config.batch_size,
            input_names=input_names, output_names=output_names, label_mode=config.label_mode,
            num_classes=num_classes, image_size=size, seed=config.seed, augment=config.augment,
            class_names=dataset.class_names, resume_step=resume, autotune=autotune)

    return make_input


# Flags that define the model, its inputs or its outputs: a checkpoint cannot be resumed with others
# (the variables may even match, e.g. another --image_size under global pooling, and mean other things).
MODEL_FLAGS = ("engine", "label_mode", "loss", "backbone", "base_model", "model_fn", "cut_layer", "drop_layers", "head_pooling",
               "mixed_precision")



def _input_shape(model: tf.keras.Model):
    return [list(s[1:]) for s in (model.input_shape if isinstance(model.input_shape, list) else [model.input_shape])]



def check_model_dir(config: Config, model: tf.keras.Model, class_names, full_model=None,
                    recipe_fixed: bool = False) -> None:
    """Refuses a --model_dir whose run belongs to another model, class count or class order."""
    num_classes = len(class_names)
    previous = files.read_run_info(config.model_dir)
    if previous and previous.get("dry_run"):
        previous = None  # A --dry_run trained nothing: it binds no later run.
    if previous and tf.train.latest_checkpoint(config.checkpoint_dir):
        _check_same_model(config, previous, full_model or model)
    if previous and previous.get("num_classes") not in (None, num_classes):
        raise UsageError(f"--model_dir={config.model_dir} holds a run with {previous['num_classes']} classes, "
                         f"this one has {num_classes}; use a new --model_dir")
    if recipe_fixed:  # The engine cannot start a new phase here (the TPU estimator); elsewhere a new phase starts.
        _check_same_recipe(config, previous)
    before = previous.get("class_names") if previous else None
    if before and list(before) != list(class_names):
        raise UsageError(f"--model_dir={config.model_dir} holds a run trained on the classes "
                         f"{','.join(before)}; this one has {','.join(class_names)} (same count, other names or "
                         "order, so its labels would mean other classes); keep the classes or use a new "
                         "--model_dir")
    checkpoint = tf.train.latest_checkpoint(config.checkpoint_dir)
    if not checkpoint:
        return
    shapes = dict(tf.train.list_variables(checkpoint))
    for weight in model.weights:
        name = weight.name.split(":")[0]
        if name not in shapes:
            raise UsageError(f"--model_dir={config.model_dir} holds a checkpoint of a different model "
                             f"(it has no variable {name}); use a new --model_dir")
        if tuple(shapes[name]) != tuple(weight.shape):
            raise UsageError(f"--model_dir={config.model_dir} holds a checkpoint of a different model "
                             f"({name} is {list(shapes[name])} there, {list(weight.shape)} here); "
                             "use a new --model_dir")



def _check_same_model(config: Config, previous: dict, model: tf.keras.Model) -> None:
    flags = previous.get("flags") or {}
    for flag in MODEL_FLAGS:
        if flag not in flags:
            continue
        old, new = flags[flag], getattr(config, flag)
        if flag == "loss":
            old, new = old or DEFAULT_LOSS.get(flags.get("label_mode", "sparse")), config.resolved_loss
        if old != new:
            keep = f"keep --{flag}={old}, or "
            if flag == "engine" and old == "estimator" and resolve_engine(None) != "estimator":
                keep = "resume it on TensorFlow 2.15 (the Estimator engine needs it), or "  # New-user trial c034.
            raise UsageError(f"--{flag}={new} differs from the --{flag}={old} of the run in --model_dir="
                             f"{config.model_dir}: its checkpoint belongs to that model; {keep}"
                             "use a new --model_dir (with --warm_start_from=<that model_dir> to start from its "
                             "weights)")
    before, now = previous.get("input_shape"), _input_shape(model)
    if before is not None and before != now:
        shown = lambda shapes: ", ".join("x".join(map(str, s)) for s in shapes)  # noqa: E731
        raise UsageError(f"the model's input is {shown(now)} here but {shown(before)} in the run in --model_dir="
                         f"{config.model_dir} (--image_size differs); keep it, or use a new --model_dir")



# Flags whose change on resume would be ignored (the checkpoint's optimizer hyperparameters win) or fail
# in RestoreV2 (optimizer slots exist only for what was trainable). Changing them is a new training phase.
_RECIPE_FLAGS = ("optimizer", "learning_rate", "freeze")



def _check_same_recipe(config: Config, previous: Optional[dict]) -> None:
    if not previous or not previous.get("flags") or not tf.train.latest_checkpoint(config.checkpoint_dir):
        return
    before = Config.from_dict(previous["flags"])
    for flag in _RECIPE_FLAGS:
        old, new = getattr(before, flag), getattr(config, flag)
        if flag == "freeze":
            old, new = old or models.default_freeze(before), new or models.default_freeze(config)
        if old != new:
            raise UsageError(f"--{flag}={new} differs from the --{flag}={old} of the run in --model_dir="
                             f"{config.model_dir}; resuming cannot change it (the checkpoint's optimizer state "
                             f"belongs to the old value); use a new --model_dir, or --warm_start_from="
                             f"{config.model_dir} with a new --model_dir to continue from its weights")



def _load_data(config: Config):
    """Loads and checks the data; returns (dataset or None, num_classes)."""
    dataset = data_lib.load(config) if config.data else None
    num_classes = dataset.num_classes if dataset else config.num_classes
    if dataset and dataset.num_classes < 2:
        where = config.eval_data if config.eval_data else config.data
        raise UsageError(f"--data={config.data} has a single class ({', '.join(dataset.class_names) or 'none'}"
                         f"{'' if where == config.data else ' with --eval_data=' + where}); a classifier needs "
                         "at least 2 (check the folder layout and --classes)")
    if config.num_classes and dataset and config.num_classes != dataset.num_classes:
        raise UsageError(f"--num_classes={config.num_classes} differs from the {dataset.num_classes} classes "
                         f"in --data ({', '.join(dataset.class_names)})")
    for split in (dataset.train, dataset.validation) if dataset else ():
        if len(split) and split.labels.max() >= num_classes:
            raise UsageError(f"--data={config.data} has label {split.labels.max()}, outside 0..{num_classes - 1}")
    if dataset and dataset.train.known_size and config.batch_size > len(dataset.train):
        raise UsageError(f"--batch_size={config.batch_size} is larger than the {len(dataset.train)} "
                         "training examples")
    return dataset, num_classes



def _check_metric_names(config: Config, num_classes: int) -> None:
    """Metric flags must name a metric this run's evaluations report (top-k needs > k classes, AUC binary)."""
    available = metrics.available(num_classes, config.label_mode, config.top_k)
    for flag in ("hypertune_metric", "early_stopping_metric", "promote_metric"):
        value = getattr(config, flag)
        if flag == "early_stopping_metric" and not config.early_stopping_patience:
            continue
        if value and value not in available:
            raise UsageError(f"--{flag}={value} is not reported for this run ({num_classes} classes, --label_mode="
                             f"{config.label_mode}, --top_k={config.top_k}); choose one of: {', '.join(available)}")



def _per_replica_batch(config: Config, plan: distribution.Plan) -> int:
    if config.batch_size % plan.num_replicas:
        raise UsageError(f"--batch_size={config.batch_size} is not divisible by the {plan.num_replicas} "
                         f"replicas of --strategy={plan.name}")
    per_replica = config.batch_size // plan.num_replicas
    logging.info("strategy %s: %d replica(s), global batch %d, per-replica batch %d", plan.name,
                 plan.num_replicas, config.batch_size, per_replica)
    return per_replica


def _holds_a_run(info_path: str) -> bool:
    """True when run_info.json is a training run's record (not a dry run's, not missing or unreadable)."""
    try:
        with tf.io.gfile.GFile(info_path) as f:
            previous = json.load(f)
    except (ValueError, UnicodeDecodeError, tf.errors.OpError):
        return False
    return isinstance(previous, dict) and not previous.get("dry_run")
