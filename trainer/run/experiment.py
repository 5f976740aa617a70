"""The experiment: data + model -> Estimator -> train_and_evaluate -> files.

`train_and_evaluate(config)` is the whole run, callable from tests and other
programs. Everything a user can get wrong is checked before the Estimator
builds its first graph. Under a multi-process strategy only the chief writes the
files of the output contract; workers and the evaluator leave nothing else.
"""
import dataclasses
import glob
import os
import re
import shutil
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.data import sources as data_lib
from trainer.outputs import report
from trainer.run import checkpoints
from trainer.model import class_weights
from trainer.util import console
from trainer.run import distribution
from trainer.run import early_stopping
from trainer.outputs import evaluations
from trainer.outputs import export
from trainer.engines.estimator import feature_cache
from trainer.util import files
from trainer.cloud import hypertune
from trainer.data import inputs
from trainer.engines.estimator import listeners
from trainer.outputs import metrics
from trainer.model import models
from trainer.run import phases
from trainer.outputs import predictions
from trainer.run import preemption
from trainer.run import preflight
from trainer.engines.estimator import progress
from trainer.retrain import promotion
from trainer.data import record_faults
from trainer.model import schedules
from trainer.engines.estimator import tpu
from trainer.run import run_lock
from trainer.config import DEFAULT_LOSS, Config, validate
from trainer.errors import NumericError, UsageError

_KERAS_CKPT_WAIT_SECS = 600


def make_run_config(config: Config, plan: Optional[distribution.Plan] = None) -> tf.estimator.RunConfig:
    """The one RunConfig of a run (TPUEstimator builds its own in `trainer.tpu`)."""
    session_config = plan.session_config if plan else None
    if config.jit:
        session_config = session_config or tf.compat.v1.ConfigProto(allow_soft_placement=True)
        session_config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return tf.estimator.RunConfig(
        model_dir=config.checkpoint_dir or config.model_dir,
        tf_random_seed=config.seed,
        save_checkpoints_steps=config.save_checkpoints_steps,
        save_checkpoints_secs=None,
        keep_checkpoint_max=config.keep_checkpoint_max,
        log_step_count_steps=100,
        save_summary_steps=100,
        session_config=session_config,
        train_distribute=plan.strategy if plan else None)


def make_estimator(model: tf.keras.Model, run_config: tf.estimator.RunConfig,
                   class_names=None, binary: bool = False, label_mode: Optional[str] = None,
                   top_k: int = 5) -> tf.estimator.Estimator:
    """model_to_estimator, with a warm start that carries *every* Keras weight.

    model_to_estimator warm-starts from the Keras weights with the default settings,
    which only restore trainable variables: BatchNorm moving statistics (and so a frozen
    pretrained trunk's inference behaviour) would silently restart at 0 and 1. We keep
    its model_fn and warm-start each weight by exact name instead. For single-output
    classifiers, predictions also carry the class names (`export.with_class_names`).
    """
    keras_dir = os.path.join(run_config.model_dir, "keras")
    if run_config.is_chief and not tf.train.latest_checkpoint(keras_dir):
        # Written here, directly from the eager weights: model_to_estimator's own first checkpoint
        # clones the model into a new graph first (3.7 s for MobileNetV2 here, vs 0.2 s).
        export.save_weights_checkpoint(model, os.path.join(keras_dir, "keras_model.ckpt"))
    keras_estimator = tf.keras.estimator.model_to_estimator(
        keras_model=model, config=run_config, checkpoint_format="saver")
    names = [w.name.split(":")[0] for w in model.weights]
    warm_start = tf.estimator.WarmStartSettings(
        ckpt_to_initialize_from=os.path.join(run_config.model_dir, "keras", "keras_model.ckpt"),
        vars_to_warm_start=[re.escape(name) + r"(:\d+)?$" for name in names])
    model_fn = keras_estimator.model_fn
    if class_names and len(model.outputs) == 1:
        model_fn = export.with_class_names(model_fn, class_names, binary)
        if label_mode:  # Evaluations also report top-k accuracy, macro F1, AUC (trainer.metrics).
            model_fn = metrics.with_eval_metrics(model_fn, len(class_names), label_mode, top_k)
    return tf.estimator.Estimator(model_fn=model_fn, config=run_config, warm_start_from=warm_start)


# Flags that define the model, its inputs or its outputs: a checkpoint cannot be resumed with others
# (the variables may even match, e.g. another --image_size under global pooling, and mean other things).
MODEL_FLAGS = ("label_mode", "loss", "backbone", "base_model", "model_fn", "cut_layer", "drop_layers", "head_pooling",
               "mixed_precision")


def _input_shape(model: tf.keras.Model):
    return [list(s[1:]) for s in (model.input_shape if isinstance(model.input_shape, list) else [model.input_shape])]


def check_model_dir(config: Config, model: tf.keras.Model, class_names, full_model=None) -> None:
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
    if config.strategy == "tpu":  # Elsewhere a changed recipe starts a new phase.
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
            raise UsageError(f"--{flag}={new} differs from the --{flag}={old} of the run in --model_dir="
                             f"{config.model_dir}: its checkpoint belongs to that model; keep --{flag}={old}, or "
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
    known = {f.name for f in dataclasses.fields(Config)}
    before = dataclasses.replace(Config(), **{k: v for k, v in previous["flags"].items() if k in known})
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


def _wait_for_chief(model_dir: str) -> None:
    """Non-chief tasks start from the Keras checkpoint only the chief writes."""
    marker = os.path.join(model_dir, "keras", "checkpoint")
    deadline = time.time() + _KERAS_CKPT_WAIT_SECS
    while not tf.io.gfile.exists(marker) and not tf.train.latest_checkpoint(model_dir):
        if time.time() > deadline:
            raise RuntimeError(f"the chief wrote no {marker} within {_KERAS_CKPT_WAIT_SECS} s")
        time.sleep(0.5)


def _summary_line(eval_metrics: dict, model_dir: str, export_path: Optional[str]) -> dict:
    keys = ("accuracy", "loss", "global_step")
    summary = {k: eval_metrics[k] for k in keys if k in eval_metrics}
    summary.update(model_dir=model_dir, export=export_path)
    return summary


def _to_builtin(metrics: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}


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
    plan = distribution.get_plan(config.strategy, config.num_gpus, config.num_cpu_replicas,
                                 tpu=config.tpu, use_tpu=config.use_tpu)
    if plan.task_type == "ps":
        preemption.uninstall()
    dataset, num_classes = _load_data(config)
    _check_metric_names(config, num_classes)
    per_replica_batch = _per_replica_batch(config, plan)

    # Fresh Keras name counters: checkpoints name variables after layers, so the same
    # flags must give the same names in every process and every call.
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(config.seed)
    tf.keras.mixed_precision.set_global_policy("mixed_float16" if config.mixed_precision else "float32")
    if config.mixed_precision and not tf.config.list_physical_devices("GPU"):  # Trial c193: silent on a CPU.
        logging.warning("--mixed_precision on a machine without a GPU: float16 compute is slower on CPUs (meant "
                        "for GPUs with tensor cores); the run goes on")
    image_shape = dataset.image_shape if dataset else None
    model = models.build_model(config, num_classes, image_shape)
    if config.model_fn and image_shape and len(model.inputs) == 1:  # Trial c069/c070: a 77-line traceback.
        expected = tuple(model.input_shape[1:])
        if len(expected) == len(image_shape) and any(e not in (None, d) for e, d in zip(expected, image_shape)):
            raise UsageError(f"--model_fn={config.model_fn} takes inputs of shape {expected}, but --data={config.data} "
                             f"holds {tuple(image_shape)}: make the model's Input shape {tuple(image_shape)}")
    models.compile_model(model, config)
    summary = models.summarize(model)
    if config.cache_features:
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
            trained = feature_cache.split(model)[1] if config.cache_features else model
            check_model_dir(config, trained, class_names, model)
            if config.cache_features and latest:
                feature_cache.check_checkpoint_trunk(model, latest, config.model_dir)
        files.write_json(os.path.join(config.model_dir, "model_summary.json"), summary)
    if dataset and dataset.train.known_size:  # Trial c209: a class with no training example went unsaid.
        present = dataset.counts().get("train", {})
        empty = [n for n in dataset.class_names if not present.get(n)]
        if empty:
            logging.warning("class(es) %s have no training example (all went to validation): the model cannot "
                            "learn them; add images or lower --validation_split", ", ".join(empty[:10]))
    estimator_name = "TPUEstimator" if plan.name == "tpu" else "Estimator"
    run_info = {
        "flags": config.to_dict(), "tf_version": tf.__version__, "strategy": plan.name,
        "num_replicas": plan.num_replicas, "per_replica_batch_size": per_replica_batch,
        "estimator": estimator_name, "num_classes": num_classes,
        "class_names": class_names,
        "counts": dataset.counts() if dataset else {},
        "skipped_files": dataset.skipped_files if dataset else [], "dry_run": config.dry_run,
        "ignored_files": dataset.ignored_files if dataset else {},
        "skipped_records": record_faults.restore(dataset, config.model_dir),
        "input_shape": _input_shape(model), "class_weights": weights,
    }
    info_path = os.path.join(config.model_dir, "run_info.json")
    console.header(config.model_dir, run_info, summary, int(latest.rsplit("-", 1)[1]) if latest else None,
                   planned[-1].last_step)
    if config.dry_run:  # What the flags plan, resolved (--epochs included).
        run_info.update(train_steps=planned[-1].last_step, plan=[
            {"name": p.name, "first_step": p.first_step, "last_step": p.last_step} for p in planned])
        files.write_json(info_path, run_info)
        return {"dry_run": True, "model_dir": config.model_dir, **{k: summary[k] for k in (
            "total_params", "trainable_params", "non_trainable_params")}}

    size = None if config.model_fn else model.input_shape[1]
    input_names, output_names = model.input_names, model.output_names  # The full model's (images in).

    def make_input(split, training):
        # One device: after a restart the shuffled stream goes on where it was (not from its start again).
        resume = (lambda: _checkpoint_step(config.checkpoint_dir)) if training and plan.name == "one_device" \
            else None
        return inputs.make_input_fn(
            split, training=training, batch_size=per_replica_batch if training else config.batch_size,
            input_names=input_names, output_names=output_names, label_mode=config.label_mode,
            num_classes=num_classes, image_size=size, seed=config.seed, augment=config.augment,
            class_names=dataset.class_names, resume_step=resume)

    if dataset.kind in ("files", "tfrecord") and not config.model_fn:
        serving_fn = export.make_image_bytes_serving_input_fn(model.input_names[0], size)
    else:
        serving_fn = export.make_serving_input_fn(
            {name: tuple(t.shape[1:]) for name, t in zip(model.input_names, model.inputs)})
    if warm_start is not None:
        run_info["warm_start"], run_info["warm_start_from"] = warm_start, warm_start.get("path")
    if not plan.is_chief:
        _wait_for_chief(config.checkpoint_dir)
    if plan.is_chief:
        files.remove_temporaries(config.model_dir)  # Left by a run killed mid-write (or by a full disk).
        if config.checkpoint_dir != config.model_dir:
            files.remove_temporaries(config.checkpoint_dir)
    started = time.time()
    # Reads the phase history; run_info.json is written when each phase starts (phases.start).
    steps = phases.prepare(config, plan, planned, run_info, info_path, train_examples)
    full_model, train_input, eval_input, cache = model, make_input(dataset.train, True), None, None
    if config.cache_features:  # The head trains and evaluates on the trunk's outputs, computed once here.
        cache = record_faults.train_skipping_bad_records(lambda: feature_cache.build(  # Bad TFRecords skipped.
            config, model, dataset, make_input, lambda m, rc: make_estimator(
                m, rc, dataset.class_names, binary=config.label_mode == "binary"), run_info), dataset, config)
        model, train_input, eval_input = cache.head, cache.train_input, cache.eval_input
    else:
        eval_input = make_input(dataset.validation, False)
    eval_metrics, estimator = None, None
    built = (planned[0].freeze, False)  # How `model` was built (a cached run's head: the trunk stays frozen).
    for index, step in enumerate(steps):
        if not cache:  # The phase decides the model: its freezing, BatchNorm mode (also after a restart).
            model, built = phases.model_for(config, num_classes, image_shape, step.phase, model, built)
        if _stopped_early(config, steps[index:]):  # Decided earlier (this run or one before a restart).
            break
        schedule = phases.schedule(config, step.phase.learning_rate, step.first_step, step.phase.last_step)
        models.compile_model(model, config, schedule, run_info.get("class_weights"))
        estimator = _make_any_estimator(config, plan, model, num_classes, image_shape, dataset.class_names,
                                        schedule)
        phases.start(config, plan, estimator, model, train_input, step, run_info, info_path)
        progress_hook = progress.ProgressHook(step.phase.last_step, config.batch_size, summarize=plan.name != "tpu",
                                              learning_rate=schedule)
        hooks = [progress_hook, preemption.PreemptionHook(config.checkpoint_dir, plan.is_chief)]
        if config.early_stopping_patience:
            hooks.append(early_stopping.StopHook(config.model_dir))
        train_spec = tf.estimator.TrainSpec(train_input, max_steps=step.phase.last_step,
                                            hooks=hooks, saving_listeners=listeners.make_listeners(config, plan))
        eval_spec = tf.estimator.EvalSpec(
            eval_input, steps=config.eval_steps, name=None,
            exporters=_exporters(config, serving_fn, dataset.class_names, cache), start_delay_secs=0,
            throttle_secs=config.eval_throttle_secs)
        console.say("phase %s: steps %d..%d, %d trainable params, learning rate %g (%s)", step.phase.name,
                     step.first_step, step.phase.last_step, models.summarize(model)["trainable_params"],
                     step.phase.learning_rate, config.lr_schedule)
        if plan.is_chief and not plan.distributed and plan.name != "tpu":  # As if never interrupted.
            record_faults.train_skipping_bad_records(lambda: evaluations.catch_up(
                estimator, eval_spec, config.checkpoint_dir, step.first_step, config.save_checkpoints_steps),
                dataset, config)
            if _stopped_early(config, steps[index:]):
                break
        eval_metrics = record_faults.train_skipping_bad_records(  # Resumes without bad TFRecords met in training.
            lambda: _train(estimator, train_spec, eval_spec, progress_hook), dataset, config)
    run_info["skipped_records"] = record_faults.skipped(dataset)
    if not plan.is_chief:
        _remove_worker_clutter(config.checkpoint_dir, plan)
        return {"task": plan.task_type, "index": plan.task_index, "model_dir": config.model_dir}

    if not steps and not cache:  # Nothing left to train: the model as the last phase built it.
        model, built = phases.model_for(config, num_classes, image_shape, planned[-1], model, built)
    if estimator is None:  # Nothing left to train (finished, or stopped early before a restart).
        models.compile_model(model, config)
        estimator = _make_any_estimator(config, plan, model, num_classes, image_shape, dataset.class_names)
    if not eval_metrics and plan.is_chief and not plan.distributed and plan.name != "tpu":
        # Killed during the final evaluation or export: do them now, as the run that was never interrupted did.
        final_spec = tf.estimator.EvalSpec(eval_input, steps=config.eval_steps, name=None, exporters=_exporters(
            config, serving_fn, dataset.class_names, cache))
        eval_metrics = record_faults.train_skipping_bad_records(lambda: evaluations.catch_up(
            estimator, final_spec, config.checkpoint_dir, planned[-1].last_step, config.save_checkpoints_steps,
            final=True), dataset, config)
    if not eval_metrics:  # Distributed (evaluation belongs to the evaluator task), or nothing left to train.
        eval_metrics = estimator.evaluate(eval_input, steps=config.eval_steps, name="chief_final")
    eval_metrics = _to_builtin(eval_metrics)
    checkpoint = _finite_checkpoint(config)
    matrix = eval_metrics.pop("confusion_matrix", None)  # Of the final evaluation (trainer.metrics).
    best = export.read_best_record(os.path.join(config.checkpoint_dir, "export", "best"))
    # eval_metrics.json describes the served model at its top level (its step included); the last evaluation,
    # when it is another step, goes under `last_evaluation` (trial c075/c017: the two were mixed).
    served = dict(eval_metrics, served_model=config.export)
    if config.export == "best" and best:
        # keras_model.h5 (and so promotion, which evaluates it) and the per-class figures describe the model
        # that is served: the best evaluation's, whose export holds its weights under the same names.
        checkpoint = os.path.join(best["export"], "variables", "variables")
        served = dict(best["metrics"], served_model="best", export_metrics=best["metrics"])
        if best["metrics"].get("global_step") != eval_metrics.get("global_step"):
            served["last_evaluation"] = dict(eval_metrics)
        matrix = best.get("confusion_matrix")
        if config.early_stopping_patience:  # Early stopping reports the best model as the result.
            eval_metrics.update(best["metrics"])
    if config.early_stopping_patience:
        run_info["early_stopped_at_step"] = early_stopping.stopped_at(config.model_dir)
    # With --cache_features the checkpoint restores the head, and the full model (its trunk inside) is written.
    export.save_keras_model(model, checkpoint, os.path.join(config.model_dir, "keras_model.h5"),
                            full_model=full_model if cache else None)
    if matrix is not None:
        served.update(metrics.from_confusion(matrix, dataset.class_names))
    files.write_json(os.path.join(config.model_dir, "eval_metrics.json"), served)
    export_path = export.latest_export(config.checkpoint_dir, config.export)
    if export_path is None:  # No exporter ran here (distributed without an evaluator).
        export_path = (cache.exporter if cache else estimator).export_saved_model(
            os.path.join(config.checkpoint_dir, "export", config.export), serving_fn,
            checkpoint_path=checkpoint).decode()
    if config.checkpoint_dir != config.model_dir:  # Vertex imports models from AIP_MODEL_DIR.
        export_path = files.copy_tree(export_path, os.path.join(
            config.model_dir, "export", config.export, os.path.basename(export_path.rstrip("/"))))
    if config.tensorboard_dir:
        listeners.copy_event_files(config.checkpoint_dir, config.tensorboard_dir)
    # The report's predictions: those the served model's evaluation kept (trainer.metrics.collected); else,
    # for a cached run, its head on the cached validation features (no trunk pass).
    served_step = best["metrics"].get("global_step") if config.export == "best" and best else \
        eval_metrics.get("global_step")
    collected = metrics.collected(config.checkpoint_dir, served_step) if served_step is not None else None

    def predict():
        if collected is not None or not cache:
            return collected  # None: the report runs the model over the validation split.
        return predictions.predict_with_estimator(estimator, eval_input, config.label_mode, checkpoint,
                                                  config.eval_steps)

    return _finish(config, run_info, info_path, eval_metrics, export_path,
                   make_input(dataset.validation, False), started, full_model, dataset, predict)


def _stopped_early(config: Config, remaining) -> bool:
    """True (and a console line naming the phases left untrained) once early stopping has decided."""
    stopped = early_stopping.stopped_at(config.model_dir) if config.early_stopping_patience else None
    if stopped is None:
        return False
    console.say("early stopping at step %s: %s not trained", stopped, ", ".join(
        f"{s.phase.name} (steps {s.first_step}..{s.phase.last_step})" for s in remaining))
    return True


def _exporters(config: Config, serving_fn, class_names=(), cache=None) -> list:
    """The exporters of each evaluation, behind the one that prints its console line (trainer.evaluations)."""
    metric = config.early_stopping_metric if config.early_stopping_patience else "accuracy"
    exporters = export.make_exporters(config.export, serving_fn, config.keep_checkpoint_max, metric)
    if cache:  # The head's checkpoints, exported as the full model (images in).
        exporters = [feature_cache.ExportingFullModel(e, cache.exporter) for e in exporters]
    if config.early_stopping_patience:
        exporters.append(early_stopping.Watcher(config.model_dir, config.early_stopping_metric,
                                                config.early_stopping_patience, config.early_stopping_min_delta))
    return [evaluations.EvaluationReporter(exporters, config.checkpoint_dir, class_names)] + \
        hypertune.make_reporters(config)


def _train(estimator, train_spec, eval_spec, progress_hook) -> Optional[dict]:
    """train_and_evaluate; returns the final evaluation (None when another task evaluates)."""
    try:
        result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    except tf.compat.v1.train.NanLossDuringTrainingError:
        raise NumericError(f"the training loss became NaN or infinite at step {progress_hook.last_step}; "
                           "nothing more was exported or written (try a lower --learning_rate)") from None
    return result[0] if result else None


def _finite_checkpoint(config: Config) -> str:
    """The final checkpoint, refused when a weight is NaN or infinite (the loss need not show it)."""
    checkpoint = tf.train.latest_checkpoint(config.checkpoint_dir)
    if not export.checkpoint_is_finite(checkpoint):
        raise NumericError(f"the trained weights in {checkpoint} are not all finite (NaN or infinite); nothing "
                           "more was exported, written or promoted (check the data for NaN values, try a "
                           "lower --learning_rate)")
    return checkpoint


def _finish(config, run_info, info_path, eval_metrics, export_path, eval_input_fn, started, model=None,
            dataset=None, predict=None) -> dict:
    """Promotion (with --champion_dir), the final run_info.json, report.html, and the summary line."""
    if config.champion_dir:
        run_info["promotion"] = promotion.run(config, config.model_dir, export_path, eval_input_fn,
                                              run_info.get("class_names"))
    if config.export_tflite != "none":
        from trainer.outputs import tflite as export_tflite

        info = export_tflite.export(config.model_dir, config.export_tflite)
        run_info["tflite"] = {k: info.get(k) for k in ("quantize", "bytes", "agreement_with_keras_model")}
        run_info["tflite"]["path"] = os.path.join(export_tflite.tflite_dir(config.model_dir), "model.tflite")
    run_info.update(train_seconds=round(time.time() - started, 1), export=export_path)
    files.write_json(info_path, run_info)
    summary = _summary_line(eval_metrics, config.model_dir, export_path)
    report.at_end(config, model, dataset, eval_input_fn, eval_metrics, summary, time.time() - started, predict)
    metrics.forget_collected(config.checkpoint_dir)  # Their one use; a long-lived process keeps nothing.
    return summary


def _make_any_estimator(config, plan, model, num_classes, image_shape, class_names, schedule=None):
    if plan.name == "tpu":
        build_config = dataclasses.replace(config, weights="none")  # Weights come from the warm start.
        return tpu.make_estimator(config, model, lambda: models.build_model(build_config, num_classes, image_shape),
                                  class_names, plan.tpu_resolver)
    estimator = make_estimator(model, make_run_config(config, plan), class_names,
                               binary=config.label_mode == "binary", label_mode=config.label_mode, top_k=config.top_k)
    if schedule is None:
        return estimator
    model_fn = schedules.with_learning_rate_summary(estimator.model_fn, schedule)
    if plan.name == "one_device":  # Checkpoints (and evaluations) on the phase's schedule, also after a restart.
        model_fn = checkpoints.with_aligned_saver(model_fn, schedule.first_step)
    return tf.estimator.Estimator(model_fn=model_fn, config=estimator.config,
                                  warm_start_from=estimator._warm_start_settings)


def _checkpoint_step(checkpoint_dir: str) -> int:
    """The global step of the latest checkpoint (0 without one): where training starts from."""
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    try:
        return int(latest.rsplit("-", 1)[1]) if latest else 0
    except ValueError:
        return 0


def _remove_worker_clutter(model_dir: str, plan: distribution.Plan) -> None:
    model_dir = model_dir or ""
    """Workers of a collective strategy write checkpoints to model_dir/tmp_worker_N; remove ours."""
    if "://" in model_dir:
        for path in tf.io.gfile.glob(os.path.join(model_dir, f"tmp_worker_{plan.task_index}")):
            tf.io.gfile.rmtree(path)
        return
    for path in glob.glob(os.path.join(model_dir, f"tmp_worker_{plan.task_index}")):
        shutil.rmtree(path, ignore_errors=True)
