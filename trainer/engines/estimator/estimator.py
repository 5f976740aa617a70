"""Building the Estimator of a run: its RunConfig, model_to_estimator with a warm start that carries every
Keras weight, the TPUEstimator for --strategy=tpu, and the model_fn wrappers of a phase."""
import dataclasses
import glob
import os
import re
import shutil
from typing import Optional

import tensorflow as tf

from trainer.config import Config
from trainer.engines.estimator import averaged, exporters, hooks, tpu
from trainer.engines.estimator.metrics import with_eval_metrics
from trainer.engines.estimator.serving import with_class_names
from trainer.errors import NumericError
from trainer.model import ema, models
from trainer.outputs import export
from trainer.run import checkpoints, distribution



def make_run_config(config: Config, plan: Optional[distribution.Plan] = None) -> tf.estimator.RunConfig:
    """The one RunConfig of a run (TPUEstimator builds its own in `trainer.engines.estimator.tpu`)."""
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
                   top_k: int = 5, averages: bool = False) -> tf.estimator.Estimator:
    """model_to_estimator, with a warm start that carries *every* Keras weight.

    model_to_estimator warm-starts from the Keras weights with the default settings,
    which only restore trainable variables: BatchNorm moving statistics (and so a frozen
    pretrained trunk's inference behaviour) would silently restart at 0 and 1. We keep
    its model_fn and warm-start each weight by exact name instead. For single-output
    classifiers, predictions also carry the class names (`export.with_class_names`). `averages` (--ema_decay):
    evaluations and exports restore the weights' averages (also when this process trains nothing and its model's
    optimizer keeps none: a restart at the final evaluation).
    """
    keras_dir = os.path.join(run_config.model_dir, "keras")
    if run_config.is_chief:
        checkpoints.rebase_state(keras_dir)  # A moved run folder: its absolute paths name the old place.
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
        model_fn = with_class_names(model_fn, class_names, binary)
        if label_mode:  # Evaluations also report top-k accuracy, macro F1, AUC (trainer.outputs.metrics).
            model_fn = with_eval_metrics(model_fn, len(class_names), label_mode, top_k)
    if averages or ema.keeps_average(model.optimizer):  # --ema_decay: evaluations and exports read the averages.
        model_fn = averaged.with_averaged_weights(model_fn, run_config.model_dir)
    return tf.estimator.Estimator(model_fn=model_fn, config=run_config, warm_start_from=warm_start)


def make_exporters(config: Config, serving_fn, class_names=(), cache=None) -> list:
    """What runs after each evaluation (trainer.policy.after_evaluation), as the Estimator's one exporter; a cached
    run exports the full model (images in) from its head's checkpoints."""
    return [exporters.PolicyExporter(config, serving_fn, class_names, cache.exporter if cache else None)]


def train(estimator, train_spec, eval_spec, progress_hook) -> Optional[dict]:
    """train_and_evaluate; returns the final evaluation (None when another task evaluates)."""
    try:
        result = tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    except tf.compat.v1.train.NanLossDuringTrainingError:
        raise NumericError(f"the training loss became NaN or infinite at step {progress_hook.last_step}; "
                           "nothing more was exported or written (try a lower --learning_rate)") from None
    return result[0] if result else None


def make_any(config, plan, model, num_classes, image_shape, class_names, schedule=None):
    """The Estimator of a phase (TPUEstimator for --strategy=tpu); with `schedule`, its learning_rate scalar and
    (one device) checkpoints on the phase's schedule."""
    if plan.name == "tpu":
        build_config = dataclasses.replace(config, weights="none")  # Weights come from the warm start.
        return tpu.make_estimator(config, model, lambda: models.build_model(build_config, num_classes, image_shape),
                                  class_names, plan.tpu_resolver)
    estimator = make_estimator(model, make_run_config(config, plan), class_names,
                               binary=config.label_mode == "binary", label_mode=config.label_mode, top_k=config.top_k,
                               averages=bool(config.ema_decay))
    if schedule is None:
        return estimator
    model_fn = hooks.with_learning_rate_summary(estimator.model_fn, schedule)
    if plan.name == "one_device":  # Checkpoints (and evaluations) on the phase's schedule, also after a restart.
        model_fn = hooks.with_aligned_saver(model_fn, schedule.first_step)
    return tf.estimator.Estimator(model_fn=model_fn, config=estimator.config,
                                  warm_start_from=estimator._warm_start_settings)


def remove_worker_clutter(model_dir: str, plan: distribution.Plan) -> None:
    model_dir = model_dir or ""
    """Workers of a collective strategy write checkpoints to model_dir/tmp_worker_N; remove ours."""
    if "://" in model_dir:
        for path in tf.io.gfile.glob(os.path.join(model_dir, f"tmp_worker_{plan.task_index}")):
            tf.io.gfile.rmtree(path)
        return
    for path in glob.glob(os.path.join(model_dir, f"tmp_worker_{plan.task_index}")):
        shutil.rmtree(path, ignore_errors=True)
