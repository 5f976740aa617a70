"""trainer: train a Keras transfer-learning image classifier as a restartable job (--engine=keras: Model.fit;
--engine=estimator: tf.estimator, TensorFlow 2.15).

  python -m trainer.task --data=FOLDER|FILE.npz|'SHARDS-*'|digits [--backbone=mobilenet_v2] [flags]

Trains (or resumes, when --model_dir already holds a run), evaluates and exports a
SavedModel, keras_model.h5 and JSON reports into --model_dir. The last stdout line is
a JSON summary. Mistakes are reported as one `error: ...` line (exit 1); SIGTERM or
Ctrl-C saves a checkpoint (exit 143 / 130) and the same command resumes.
Flags: --helpfull lists them all; --flagfile=FILE reads them from a file.
"""
# For developers: the only module that reads absl FLAGS. It turns them into a `Config`, runs
# `experiment.train_and_evaluate`, and turns every UsageError into one `error:` line.
import gc
import json
import os
import re
import sys

# Quieten TensorFlow's C++ start-up chatter before it is imported; users can override. `run` lowers it to 0:
# the command line captures the C++ log into train.log (trainer.util.console).
_CPP_LOG_LEVEL_GIVEN = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import dataclasses  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from trainer import config as config_lib  # noqa: E402
from trainer import metric_registry  # noqa: E402
from trainer.util import console  # noqa: E402
from trainer.errors import UsageError  # noqa: E402

FLAGS = flags.FLAGS
_DEFAULTS = config_lib.Config()
# The flag table: each flag's name, type and help are here, its default is the Config field's of the same name
# (tests/unit/test_flag_reference.py holds both); docs/flags.md is generated from it (scripts/flag_reference.py).

# Data.
flags.DEFINE_string("data", _DEFAULTS.data, "'digits' (built in), a .npz file (x_train, y_train, x_test, y_test), "
                    "or a folder with one sub-folder of images per class.")
flags.DEFINE_string("model_dir", _DEFAULTS.model_dir, "Output folder; re-running with the same one resumes. "
                    "Default: $AIP_MODEL_DIR if set, else runs/<timestamp>.")
flags.DEFINE_float("validation_split", _DEFAULTS.validation_split,
                   "Fraction of a folder (or of digits) held out for validation, chosen by file-name hash.")
flags.DEFINE_list("classes", list(_DEFAULTS.classes), "Keep only these classes, in this order, as labels 0..k-1.")
flags.DEFINE_string("eval_data", _DEFAULTS.eval_data, "A separate evaluation source (folder or TFRecord glob); then all of "
                    "--data trains.")
flags.DEFINE_string("labels_file", _DEFAULTS.labels_file, "Class names, one per line: fixes the label order (folder names and "
                    "image/class/text are matched against it).")
flags.DEFINE_string("augment", "", "Training-only augmentation, e.g. flip,rotate:0.1,zoom:0.2 (rotation as a "
                    "fraction of a full turn, zoom as a fraction), randaugment:N:M (default 2:9), trivialaugment, "
                    "mixup:ALPHA (0.2), cutmix:ALPHA (1.0; with mixup, each example takes one of the two). "
                    "Reproducible under --seed.")
flags.DEFINE_float("max_bad_fraction", _DEFAULTS.max_bad_fraction, "Stop when more than this fraction of "
                   "the image files is unreadable (fewer are skipped and reported).")
flags.DEFINE_integer("max_image_mb", _DEFAULTS.max_image_mb, "Image files larger than this (in MiB) are skipped "
                     "and reported like unreadable ones; so are files that are not regular files (FIFOs, devices).")
# Model.
flags.DEFINE_string("backbone", _DEFAULTS.backbone, "Trunk from the registry: mlp, small_cnn, mobilenet_v2, "
                    "inception_v3, vgg16, vgg19, resnet50, xception, densenet121, efficientnet_b0.")
flags.DEFINE_string("weights", _DEFAULTS.weights, "imagenet, none, or a weights file. Default: imagenet for Keras "
                    "applications, none for mlp and small_cnn.")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Square input size. 0: the backbone's default (the data's own size "
                     "for mlp and small_cnn on arrays).")
flags.DEFINE_string("cut_layer", _DEFAULTS.cut_layer, "Use this trunk layer's output as the trunk's output (e.g. mixed7).")
flags.DEFINE_enum("head_pooling", _DEFAULTS.head_pooling, config_lib.HEAD_POOLINGS,
                  "How the head reduces a 4-D trunk output.")
flags.DEFINE_list("head_units", [str(u) for u in _DEFAULTS.head_units], "Widths of the head's hidden Dense ReLU layers, e.g. 1024 or 4096,4096.")
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate after each hidden head layer.")
flags.DEFINE_integer("num_classes", _DEFAULTS.num_classes, "Classes of the head. Default: inferred from --data.")
flags.DEFINE_enum("label_mode", _DEFAULTS.label_mode, config_lib.LABEL_MODES,
                  "sparse (class ids), categorical (one-hot) or binary (one sigmoid unit).")
flags.DEFINE_string("freeze", _DEFAULTS.freeze, "all, none, N (freeze the first N trunk layers, its InputLayer "
                    "counted) or -N (train only the last N trunk layers). Default: all when the trunk has "
                    "pretrained weights or comes from --base_model, none when it starts from random weights.")
flags.DEFINE_string("base_model", _DEFAULTS.base_model, "A saved Keras model (.h5, .keras, SavedModel) whose layers, "
                    "less the last --drop_layers, become the trunk (replaces --backbone).")
flags.DEFINE_integer("drop_layers", _DEFAULTS.drop_layers, "Layers to drop from the end of --base_model.")
flags.DEFINE_bool("allow_custom_objects", _DEFAULTS.allow_custom_objects, "Let --base_model run Python code stored in it (Lambda layers). "
                  "Only for models you trust.")
flags.DEFINE_string("model_fn", _DEFAULTS.model_fn, "package.module:function returning an uncompiled functional Keras "
                    "model (given num_classes= if it takes that parameter; input names = feature keys, output "
                    "names = label keys).")
# Training.
flags.DEFINE_integer("train_steps", _DEFAULTS.train_steps, "Total training steps (global step to reach).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size.")
flags.DEFINE_string("optimizer", _DEFAULTS.optimizer, "adam, sgd or rmsprop (Keras legacy optimizers, which "
                    "model_to_estimator needs).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Learning rate.")
flags.DEFINE_string("loss", _DEFAULTS.loss, "Default: derived from --label_mode; mse is also accepted.")
flags.DEFINE_integer("eval_steps", _DEFAULTS.eval_steps, "Evaluation batches. Default: the whole validation split.")
flags.DEFINE_integer("save_checkpoints_steps", _DEFAULTS.save_checkpoints_steps, "Checkpoint every N steps.")
flags.DEFINE_integer("keep_checkpoint_max", _DEFAULTS.keep_checkpoint_max, "Checkpoints (and exports) kept.")
flags.DEFINE_integer("eval_throttle_secs", _DEFAULTS.eval_throttle_secs,
                     "At least this many seconds between evaluations (each follows a checkpoint).")
flags.DEFINE_enum("export", _DEFAULTS.export, config_lib.EXPORTS,
                  "Which SavedModel to export: best (on accuracy), latest (each eval) or final.")
flags.DEFINE_enum("calibrate", _DEFAULTS.calibrate, config_lib.CALIBRATIONS, "temperature: after training, fit "
                  "one temperature on the validation split (minimum NLL) and fold it into the output layer, so "
                  "keras_model.h5, the TFLite model and the SavedModel (export/calibrated/) serve calibrated "
                  "probabilities with the same classes; eval_metrics.json's `calibration` gives ECE, NLL and "
                  "Brier before and after. none: serve the probabilities as trained.")
flags.DEFINE_enum("export_tflite", _DEFAULTS.export_tflite, config_lib.TFLITE_MODES, "Also write <model_dir>/export/tflite/ "
                  "(model.tflite, labels.txt, model_info.json) at the end: float32, float16 or int8 (full-integer, "
                  "calibrated on training images).")
flags.DEFINE_bool("dry_run", _DEFAULTS.dry_run, "Build and validate everything, write model_summary.json; train nothing.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed (shuffling, initialisation).")
flags.DEFINE_bool("cache_features", _DEFAULTS.cache_features, "Frozen trunk, no augmentation: compute the trunk's outputs once and "
                  "train the head on them (the full model is still evaluated and exported).")
flags.DEFINE_bool("mixed_precision", _DEFAULTS.mixed_precision, "mixed_float16 compute (GPUs with tensor cores); the output layer "
                  "stays float32.")
flags.DEFINE_bool("jit", _DEFAULTS.jit, "XLA JIT compilation of the training graph (global_jit_level ON_1).")
# The fine-tuning recipe.
flags.DEFINE_float("epochs", _DEFAULTS.epochs, "Train for this many passes over the training data: sets --train_steps to "
                   "ceil(epochs x examples / batch_size). Excludes --train_steps.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, config_lib.SCHEDULES, "Learning rate over each phase, "
                  "from the global step: constant, cosine (to --min_learning_rate), exponential or step decay.")
flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Linear warmup from 0 over the first N steps of each phase.")
flags.DEFINE_float("min_learning_rate", _DEFAULTS.min_learning_rate, "Where --lr_schedule=cosine ends, at the phase's last step.")
flags.DEFINE_float("lr_decay_rate", _DEFAULTS.lr_decay_rate, "exponential/step: factor per --lr_decay_steps.")
flags.DEFINE_integer("lr_decay_steps", _DEFAULTS.lr_decay_steps, "exponential/step: steps per decay factor.")
flags.DEFINE_integer("fine_tune_steps", _DEFAULTS.fine_tune_steps, "A second phase of N steps after --train_steps, with the trunk "
                     "unfrozen as --fine_tune_freeze says, at --fine_tune_learning_rate, fresh optimizer state.")
flags.DEFINE_float("fine_tune_epochs", _DEFAULTS.fine_tune_epochs, "The second phase's length in epochs (excludes --fine_tune_steps).")
flags.DEFINE_string("fine_tune_freeze", _DEFAULTS.fine_tune_freeze, "The trunk's freezing in the second phase "
                    "(same syntax as --freeze). BatchNorm layers stay in inference mode.")
flags.DEFINE_float("fine_tune_learning_rate", _DEFAULTS.fine_tune_learning_rate, "The second phase's learning rate. Default: "
                   "--learning_rate / 10.")
flags.DEFINE_float("ema_decay", _DEFAULTS.ema_decay, "Keep an exponential moving average of the weights with this "
                   "decay (e.g. 0.999); evaluation, exports, keras_model.h5, TFLite and promotion use it. Each phase "
                   "starts its own average. 0: off.")
flags.DEFINE_bool("ema_warmup", _DEFAULTS.ema_warmup, "Ramp the average's decay up as min(D, (1 + t) / (10 + t)) over "
                  "the phase's steps t, so that early weights fade out (Model Garden's ramp).")
flags.DEFINE_enum("tta", _DEFAULTS.tta, config_lib.TTA_KINDS, "Test-time augmentation of the final "
                  "evaluation: the served model's probabilities averaged over the image and its mirror (flip), and "
                  "their central crops (flip_crop); eval_metrics.json `tta` gives both figures.")
flags.DEFINE_float("layer_lr_decay", _DEFAULTS.layer_lr_decay, "Fine-tune phase: each trunk layer with weights, "
                   "from the top down, trains at this factor of the rate above it (the head at the phase's rate; "
                   "0.9: the 10th layer down at 0.35 of it). 1: off.")
flags.DEFINE_float("label_smoothing", _DEFAULTS.label_smoothing, "Label smoothing, for every --label_mode.")
flags.DEFINE_string("class_weight", _DEFAULTS.class_weight, "Per-example loss weights: none, balanced "
                    "(n / (k x n_class) from the training counts; a class with no training example weighs 1 and is "
                    "named in a warning) or a .json file {class name: finite weight >= 0} (absent classes weigh 1).")
flags.DEFINE_integer("early_stopping_patience", _DEFAULTS.early_stopping_patience, "Stop after K evaluations in a row without improvement of "
                     "--early_stopping_metric (0: off). Evaluations follow checkpoints.")
flags.DEFINE_enum("early_stopping_metric", _DEFAULTS.early_stopping_metric, metric_registry.names(),
                  "Metric watched by early stopping (loss: lower is better).")
flags.DEFINE_float("early_stopping_min_delta", _DEFAULTS.early_stopping_min_delta, "An improvement must exceed this.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "L2 penalty on trainable kernels (not biases, not BatchNorm).")
flags.DEFINE_float("clip_norm", _DEFAULTS.clip_norm, "Clip gradients to this global norm (0: off).")
flags.DEFINE_integer("top_k", _DEFAULTS.top_k, "k of top_k_accuracy in eval_metrics.json (with more classes).")
# Cloud.
flags.DEFINE_string("checkpoint_dir", _DEFAULTS.checkpoint_dir, "Where the Estimator writes checkpoints and events. Default: "
                    "$AIP_CHECKPOINT_DIR when --model_dir is not given, else --model_dir.")
flags.DEFINE_string("tensorboard_dir", _DEFAULTS.tensorboard_dir, "Also copy TensorBoard event files here at each checkpoint. "
                    "Default: $AIP_TENSORBOARD_LOG_DIR if set.")
flags.DEFINE_string("sync_checkpoints_to", _DEFAULTS.sync_checkpoints_to, "gs:// folder that mirrors each new checkpoint from a local "
                    "--model_dir (useful on preemptible machines).")
flags.DEFINE_string("hypertune_metric", _DEFAULTS.hypertune_metric, "Report this evaluation metric (accuracy, loss, ...) to Vertex AI "
                    "hyperparameter tuning after each evaluation. Default: $CLOUD_ML_HP_METRIC_TAG.")
# Scheduled retraining.
flags.DEFINE_string("champion_dir", _DEFAULTS.champion_dir, "Promote this run's model into this folder (local or gs://) only if it "
                    "beats the current champion on this run's evaluation data.")
flags.DEFINE_enum("promote_metric", _DEFAULTS.promote_metric, metric_registry.names(), "Metric compared for "
                  "promotion (loss: lower is better).")
flags.DEFINE_enum("promote_test", _DEFAULTS.promote_test, config_lib.PROMOTE_TESTS, "How the gate decides that the "
                  "challenger is better beyond chance, both models scored on the same evaluation examples: mcnemar "
                  "(the exact test on the examples one model alone gets right; accuracy only), bootstrap (the "
                  "paired bootstrap of the metric's difference, 2,000 resamples seeded by --seed) or none (the "
                  "point estimate alone; loss is the predictions' NLL for all three). Default: mcnemar for "
                  "--promote_metric=accuracy, else bootstrap.")
flags.DEFINE_float("promote_confidence", _DEFAULTS.promote_confidence, "The gate's confidence: McNemar's p-value "
                   "must be below 1 - this; the bootstrap's one-sided lower bound is taken at this level.")
flags.DEFINE_float("promote_margin", _DEFAULTS.promote_margin, "The challenger must be better by more than this "
                   "(the bootstrap's lower bound must clear it; with mcnemar and none, the observed difference).")
flags.DEFINE_alias("promote_min_delta", "promote_margin")
flags.DEFINE_float("promote_max_class_drop", _DEFAULTS.promote_max_class_drop, "Refuse a challenger whose recall "
                   "on any class the champion knows falls by more than this (e.g. 0.05), however much better it is "
                   "overall. Default: no per-class floor.")
flags.DEFINE_bool("promote", _DEFAULTS.promote, "With --champion_dir: move CHAMPION.json when the gate passes. "
                  "--promote=false runs the gate and records its decision in run_info.json without moving it; "
                  "`python -m trainer.champion promote` (the pipeline's promote step) applies the decision later.")
flags.DEFINE_string("warm_start_from", _DEFAULTS.warm_start_from, "Start from these weights instead of the pretrained trunk alone: "
                    "'champion' (the version CHAMPION.json names), a keras_model.h5, or a checkpoint folder.")
flags.DEFINE_bool("unique_run_dir", _DEFAULTS.unique_run_dir, "Write into <model_dir>/<run id> ($CLOUD_ML_JOB_ID, else a UTC "
                  "timestamp), and checkpoints into <checkpoint_dir>/<run id> when --checkpoint_dir (or "
                  "$AIP_CHECKPOINT_DIR) is given: each scheduled run trains in its own folders.")
# Distribution.
flags.DEFINE_string("engine", _DEFAULTS.engine, "estimator (the Estimator API, TensorFlow 2.15 only) or keras (Model.fit, TensorFlow "
                    "2.15 or 2.21 with tf-keras): the same flags, files and strategies. Default: estimator where "
                    "the Estimator API imports, else keras.")
flags.DEFINE_string("strategy", _DEFAULTS.strategy, "auto, one_device, mirrored, multi_worker, parameter_server "
                    "or tpu. auto: multi_worker when TF_CONFIG names several workers, mirrored with more than one "
                    "GPU, else one_device.")
flags.DEFINE_integer("num_gpus", _DEFAULTS.num_gpus, "GPUs for --strategy=mirrored. Default: all visible.")
flags.DEFINE_integer("num_cpu_replicas", _DEFAULTS.num_cpu_replicas, "Split the host CPU into N mirrored replicas (testing without GPUs).")
flags.DEFINE_string("tpu", _DEFAULTS.tpu, "TPU name or address for --strategy=tpu ('local' on TPU VMs).")
flags.DEFINE_integer("tpu_iterations_per_loop", _DEFAULTS.tpu_iterations_per_loop,
                     "Training steps per TPU loop (iterations_per_loop).")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution, "--engine=keras: training steps per "
                     "call into the device, so the host does not wait for each step (Model.fit's steps_per_execution); "
                     "must divide --save_checkpoints_steps. Signals, progress and stop requests are read between "
                     "calls. 0: the largest divisor of --save_checkpoints_steps up to 10.")
flags.DEFINE_bool("use_tpu", _DEFAULTS.use_tpu, "With --strategy=tpu: false runs the identical TPU path on CPU/GPU.")
# Console.
flags.DEFINE_bool("verbose", False, "Show the full log (TensorFlow's included) on the console too; it is always "
                  "in <model_dir>/train.log.")


def config_from_flags() -> config_lib.Config:
    """Builds the Config from parsed FLAGS."""
    try:
        head_units = tuple(int(u) for u in FLAGS.head_units)
    except ValueError:
        raise UsageError(f"--head_units={','.join(FLAGS.head_units)} must be a comma list of integers") from None
    # Every Config field is the flag of the same name (tests/unit/test_flag_reference.py holds it), parsed as is but
    # for the three below.
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.Config)
              if f.name not in ("classes", "head_units", "augment")}
    if FLAGS.epochs and FLAGS["train_steps"].present:
        raise UsageError(f"--epochs={FLAGS.epochs} and --train_steps={FLAGS.train_steps} exclude each other: "
                         "give one")
    classes = tuple(c.strip() for c in FLAGS.classes if c.strip())  # "a,b," is a slip, not a class "".
    return config_lib.Config(classes=classes, head_units=head_units,
                             augment=config_lib.parse_augment(FLAGS.augment), **values)


def check_flags(args) -> config_lib.Config:
    """Parses and validates trainer flags as a job would run them, without TensorFlow or the data (for submitting
    a job or a pipeline from another machine: mistakes show now, not an hour later); returns the Config.

    Raises:
        UsageError: naming the flag at fault.
    """
    FLAGS.unparse_flags()
    try:
        extra = FLAGS(["trainer", *args])
    except flags.Error as e:
        raise UsageError(f"trainer flags: {e}") from None
    if len(extra) > 1:
        raise UsageError(f"trainer flags: unexpected arguments {' '.join(extra[1:])} (flags look like --name=value)")
    config = config_from_flags()
    if not config.data:
        raise UsageError("trainer flags: --data is required (a gs:// folder, TFRecord glob or .npz)")
    config_lib.validate(config, here=False)  # This machine may have no TensorFlow, or another one.
    return config


def main(argv, own_process: bool = False) -> None:
    """Runs the job. `own_process`: the command line owns this process, so its stderr (fd 2) is taken over."""
    console.install(verbose=FLAGS.verbose, capture_fd2=own_process)
    try:
        _main(argv)
    finally:
        if not own_process:
            console.uninstall()  # Called from a test or another program: give its logging back.


def _main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])} (flags look like --name=value)")
    from trainer.stages import experiment  # Import TensorFlow: after flag parsing, so --help is fast.
    from trainer.run import preemption

    preemption.install()
    config = None
    try:
        # Validated once here: a default --model_dir is a new timestamped folder, named in the resume hint.
        config = config_lib.validate(config_from_flags())
        if not FLAGS.model_dir and not os.environ.get("AIP_MODEL_DIR") and not FLAGS.dry_run:
            _say_unfinished_default_run(config.model_dir)
        summary = experiment.train_and_evaluate(config)
    except UsageError as e:
        _fail(str(e))
    except preemption.Preempted as e:
        where = f" at step {e.step}" if e.step is not None else ""
        word = "preempted" if e.signal_name == "SIGTERM" else "interrupted"
        message = f"{word}{where} ({e.signal_name}): the latest checkpoint is kept; {_resume_hint(config)}"
        console.log_only("%s", message, level="warning")  # First: the console may be gone (its reader killed).
        _say(sys.stderr, message)
        sys.exit(e.exit_status)
    except Exception as e:  # TensorFlow's gs:// filesystem failing mid-run, a full disk: one line, not a traceback.
        from trainer.stages import preflight
        from trainer.errors import disk_failure

        message = disk_failure(e) or preflight.storage_failure(e)
        if message is None:
            raise
        _fail(message)
    _say(sys.stdout, json.dumps(summary, sort_keys=True))


def _say_unfinished_default_run(model_dir: str) -> None:
    """Without --model_dir each run takes a new runs/<timestamp> folder, so the same command does not resume one
    that was killed (newcomer pass 2026-12-05: no word of it). The newest unfinished one is named, with how to
    resume it."""
    root = os.path.dirname(model_dir)
    try:
        names = sorted((n for n in os.listdir(root) if re.fullmatch(r"\d{8}-\d{6}", n)), reverse=True)
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        if folder == model_dir or not os.path.exists(os.path.join(folder, "checkpoint")):
            continue
        try:
            with open(os.path.join(folder, "run_info.json")) as f:
                finished = "export" in json.load(f)
        except (OSError, ValueError):
            finished = False
        if not finished:
            _say(sys.stderr, f"note: {folder} holds an unfinished run; this one starts anew in {model_dir} (without "
                             f"--model_dir each run takes a new folder): to resume that one instead, stop this and "
                             f"run the same command with --model_dir={folder}")
        return


def _resume_hint(config) -> str:
    """How to resume: the same command, or with the --model_dir this run chose for itself."""
    if config is None:
        return "run the same command again to start"
    named = FLAGS.model_dir or os.environ.get("AIP_MODEL_DIR")
    if named and (not FLAGS.unique_run_dir or os.environ.get("CLOUD_ML_JOB_ID")):
        return "run the same command again to resume"
    extra = " without --unique_run_dir" if FLAGS.unique_run_dir else ""
    also = f" --checkpoint_dir={config.checkpoint_dir}" if FLAGS.checkpoint_dir and FLAGS.unique_run_dir else ""
    return f"to resume, run the same command{extra} with --model_dir={config.model_dir}{also}"


def _fail(message: str) -> None:
    if console.installed():
        console.log_only("error: %s", message, level="error")
    _say(sys.stderr, f"error: {message}")
    sys.exit(1)


def _say(stream, line: str) -> None:
    """A line on the console, which may be gone: a launcher or a pipe reader killed (trainer.launch_local's tasks
    lost their preemption line to a BrokenPipeError traceback). The run's outcome and train.log do not depend on it."""
    try:
        stream.write(line + "\n")
        stream.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _parse_flags(argv):
    """absl parsing, with flag errors (bad values, missing --flagfile) as one `error:` line."""
    argv = ["--help" if a == "-h" else a for a in argv]  # absl knows --help and -?, users type -h.
    try:
        return FLAGS(argv)
    except flags.Error as e:
        # absl's own prefix on a missing --flagfile ("ERROR:: Unable to open flagfile: ...") is not ours.
        _fail(re.sub(r"^ERROR::\s*", "", str(e)))
    except SystemExit:
        # absl exits 1 after printing --help/--helpfull/--helpshort; asking for help is no error.
        if any(a.split("=")[0].lstrip("-") in ("help", "helpfull", "helpshort", "helpxml", "h", "?")
               for a in argv[1:]):
            sys.exit(0)
        raise


def run() -> None:
    """Console-script entry."""
    logging.set_verbosity(logging.INFO)
    if not _CPP_LOG_LEVEL_GIVEN:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # Read when TensorFlow is imported, after flag parsing.
    app.run(_main_then_exit, flags_parser=_parse_flags)


def _main_then_exit(argv) -> None:
    main(argv, own_process=True)
    # The process ends next: exempt the run's objects (Keras clones, Estimator graphs) from the
    # interpreter's final garbage collection, which took 2-12 s after the summary line (issue 15).
    gc.freeze()


if __name__ == "__main__":
    run()
