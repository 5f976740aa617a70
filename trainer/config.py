"""The run configuration: one frozen object, built from flags, validated up front.

Library code takes a `Config`, never absl FLAGS, so it can be called from tests
and other programs. `validate` checks everything that needs no data and no
model; checks that need them live next to the code that loads them, and all of
them run before any TensorFlow graph is built.
"""
import dataclasses
import json
import math
import os
import time
import uuid
from typing import Optional, Tuple

from trainer import augmentations, metric_registry
from trainer.errors import UsageError

LABEL_MODES = ("sparse", "categorical", "binary")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
          "binary_crossentropy", "mse")
HEAD_POOLINGS = ("avg", "max", "flatten")
EXPORTS = ("best", "latest", "final")
PROMOTE_METRICS = ("accuracy", "loss")
PROMOTE_TESTS = ("mcnemar", "bootstrap", "none")  # trainer.retrain.gate
CALIBRATIONS = ("temperature", "none")  # trainer.outputs.calibration

# Scalar evaluation metrics (what --hypertune_metric, --early_stopping_metric and --promote_metric may name): the
# metric registry's (trainer/metric_registry.py), read when checked, so a metric registered later counts too.
SCHEDULES = ("constant", "cosine", "exponential", "step")
MAX_SEED = 2**32 - 1
# Path flags: `~` is expanded (a shell does not expand it inside --flag=~/x).
PATH_FLAGS = ("data", "model_dir", "eval_data", "labels_file", "base_model", "weights", "checkpoint_dir",
              "tensorboard_dir", "champion_dir", "warm_start_from")
TFLITE_MODES = ("none", "float32", "float16", "int8")
TFLITE_CALIBRATION_EXAMPLES, TFLITE_CHECK_EXAMPLES = 300, 500  # trainer.export_tflite's defaults
TTA_KINDS = ("none", "flip", "flip_crop")  # --tta of training and of trainer.predict

# The loss each label mode implies when --loss is not given.
DEFAULT_LOSS = {
    "sparse": "sparse_categorical_crossentropy",
    "categorical": "categorical_crossentropy",
    "binary": "binary_crossentropy",
}
# The losses that fit each label mode's labels and output layer. Any other pair either fails while the
# graph is built or, worse, trains to nothing (binary labels under categorical_crossentropy: loss 0.0).
COMPATIBLE_LOSSES = {
    "sparse": ("sparse_categorical_crossentropy",),
    "categorical": ("categorical_crossentropy", "mse"),
    "binary": ("binary_crossentropy", "mse"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs. Field names match the command-line flags."""

    data: Optional[str] = None
    model_dir: Optional[str] = None
    validation_split: float = 0.2
    classes: Tuple[str, ...] = ()
    eval_data: Optional[str] = None
    labels_file: Optional[str] = None
    augment: Tuple[tuple, ...] = ()  # ((op, amount, ...), ...) from --augment.
    max_bad_fraction: float = 0.1
    max_image_mb: int = 64  # Larger image files are skipped (counted and named like unreadable ones).
    # Model.
    backbone: str = "mobilenet_v2"
    weights: Optional[str] = None  # None: the backbone's default.
    image_size: int = 0  # 0: the backbone's (or the data's) default.
    cut_layer: Optional[str] = None
    head_pooling: str = "avg"
    head_units: Tuple[int, ...] = ()
    dropout: float = 0.0
    num_classes: Optional[int] = None
    label_mode: str = "sparse"
    freeze: Optional[str] = None  # None: all with pretrained weights or --base_model, else none.
    base_model: Optional[str] = None
    drop_layers: int = 1
    allow_custom_objects: bool = False
    model_fn: Optional[str] = None
    # Training.
    train_steps: int = 1000
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    loss: Optional[str] = None
    eval_steps: Optional[int] = None
    save_checkpoints_steps: int = 500
    keep_checkpoint_max: int = 5
    eval_throttle_secs: int = 60
    export: str = "best"
    calibrate: str = "temperature"
    export_tflite: str = "none"  # Also write export/tflite/ at the end of the run (trainer.export_tflite).
    dry_run: bool = False
    seed: int = 42
    cache_features: bool = False
    mixed_precision: bool = False
    jit: bool = False
    # Cloud.
    checkpoint_dir: Optional[str] = None  # Default: $AIP_CHECKPOINT_DIR, else model_dir.
    tensorboard_dir: Optional[str] = None  # Default: $AIP_TENSORBOARD_LOG_DIR, else none (model_dir has them).
    sync_checkpoints_to: Optional[str] = None
    hypertune_metric: Optional[str] = None  # Default: $CLOUD_ML_HP_METRIC_TAG.
    # Scheduled retraining.
    champion_dir: Optional[str] = None
    promote_metric: str = "accuracy"
    promote_margin: float = 0.0  # --promote_min_delta is its former name (an alias).
    promote_test: Optional[str] = None  # None: mcnemar for accuracy, bootstrap for the other metrics.
    promote_confidence: float = 0.95
    promote_max_class_drop: Optional[float] = None
    promote: bool = True  # False: the gate's decision is recorded, CHAMPION.json left (trainer.champion promote).
    warm_start_from: Optional[str] = None  # "champion", a keras_model.h5, or a checkpoint folder.
    unique_run_dir: bool = False
    # Distribution.
    engine: Optional[str] = None  # estimator, keras; None: estimator where tensorflow_estimator imports, else keras.
    strategy: str = "auto"
    num_gpus: Optional[int] = None  # None: all visible GPUs.
    num_cpu_replicas: int = 0
    tpu: Optional[str] = None
    tpu_iterations_per_loop: int = 100
    steps_per_execution: int = 0
    use_tpu: bool = True
    # The fine-tuning recipe.
    epochs: float = 0.0  # > 0: train_steps = ceil(epochs x training examples / batch_size).
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
    lr_decay_rate: float = 0.1
    lr_decay_steps: int = 1000
    fine_tune_steps: int = 0
    fine_tune_epochs: float = 0.0
    fine_tune_freeze: str = "none"
    fine_tune_learning_rate: Optional[float] = None  # None: learning_rate / 10.
    ema_decay: float = 0.0  # An exponential moving average of the weights is evaluated and served; 0: off.
    ema_warmup: bool = True  # The average's decay ramps up as min(D, (1 + t) / (10 + t)).
    tta: str = "none"  # Test-time augmentation of the final evaluation: none, flip or flip_crop.
    layer_lr_decay: float = 1.0  # The fine-tune phase's rate shrinks by this factor per trunk layer down; 1: off.
    label_smoothing: float = 0.0
    class_weight: str = "none"  # none, balanced, or a JSON file {class name: weight}.
    early_stopping_patience: int = 0
    early_stopping_metric: str = "accuracy"
    early_stopping_min_delta: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    top_k: int = 5

    @property
    def resolved_loss(self) -> str:
        return self.loss or DEFAULT_LOSS[self.label_mode]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, flags: dict) -> "Config":
        """The inverse of to_dict, from run_info.json's `flags` (JSON lists back to tuples; names this version does
        not know are left out, missing ones take their defaults): the one place a run's record becomes a Config."""
        known = {f.name for f in dataclasses.fields(cls)}
        flags = dict(flags or {})
        if "promote_min_delta" in flags:  # The margin's former name, in the records of earlier versions.
            flags.setdefault("promote_margin", flags.pop("promote_min_delta"))
        flags = {k: v for k, v in flags.items() if k in known}
        for key in ("classes", "head_units"):
            if key in flags:
                flags[key] = tuple(flags[key] or ())
        if "augment" in flags:
            flags["augment"] = tuple(tuple(a) for a in flags["augment"] or ())
        return cls(**flags)


def default_model_dir() -> str:
    """`$AIP_MODEL_DIR` on Vertex AI, else a fresh `runs/<timestamp>` folder."""
    return os.environ.get("AIP_MODEL_DIR") or os.path.join(
        "runs", time.strftime("%Y%m%d-%H%M%S"))


ENGINES = ("estimator", "keras")


def served_export_kinds(flags: dict) -> list:
    """The export folders of a finished run (its run_info.json `flags`), the served one first: export/calibrated/
    when the run calibrated (trainer.stages.calibrate), then --export's, then the others."""
    preferred = flags.get("export") or "best"
    return (["calibrated"] if flags.get("calibrate") == "temperature" else []) + [preferred] + [
        k for k in EXPORTS if k != preferred]


def resolve_engine(name: Optional[str]) -> str:
    """--engine, checked against this TensorFlow; None: estimator where the Estimator API exists (TF <= 2.15), else keras."""
    import importlib.util

    import tensorflow as tf

    if str(getattr(tf.keras, "__version__", "2")).startswith("3"):
        raise UsageError("tf.keras is Keras 3 in this process, but trainer is written for the Keras 2 API: set "
                         "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported (importing trainer first does it) "
                         "and install tf-keras (trainer[keras-cpu])")
    major_minor = tuple(int(p) for p in tf.__version__.split(".")[:2])
    has_estimator = major_minor <= (2, 15) and importlib.util.find_spec("tensorflow_estimator") is not None
    if name is None:
        return "estimator" if has_estimator else "keras"
    _choice("engine", name, ENGINES)
    if name == "estimator" and not has_estimator:
        raise UsageError(f"--engine=estimator needs TensorFlow 2.15 with tensorflow-estimator (the Estimator API was "
                         f"removed in TensorFlow 2.16); this is TensorFlow {tf.__version__}: use --engine=keras "
                         "(the same flags and files), or install trainer[cpu] on Python 3.10/3.11")
    return name


def _choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"--{flag}={value} is not valid; choose one of: {', '.join(choices)}")


def validate(config: Config, here: bool = True) -> Config:
    """Checks flag values and their combinations; returns the config with defaults filled.

    here=False checks a run that will happen elsewhere (scripts/submit_vertex.py, which may have no TensorFlow): the
    engine is then checked by name only, not against this process's TensorFlow.

    Raises:
        UsageError: naming the flag at fault.
    """
    if getattr(config, "_validated", None) in (True, here):  # The entry point validated it: once per run.
        return config
    validated = _validate(config, here)
    object.__setattr__(validated, "_validated", here)  # Not a field: dataclasses.replace makes one to check again.
    return validated


def _validate(config: Config, here: bool) -> Config:
    for field in dataclasses.fields(config):  # nan passes every comparison below (and inf most).
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{field.name}={value} is not a finite number")
    if not config.data and not config.dry_run:
        raise UsageError("--data is required: 'digits', a .npz file, or a folder of class sub-folders "
                         "(only --dry_run may leave it out, with --num_classes)")
    if config.dry_run and not config.data and not config.num_classes and not config.model_fn:
        raise UsageError("--dry_run without --data needs --num_classes")
    if here:
        config = dataclasses.replace(config, engine=resolve_engine(config.engine))
    elif config.engine is not None:
        _choice("engine", config.engine, ENGINES)
    _choice("label_mode", config.label_mode, LABEL_MODES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("head_pooling", config.head_pooling, HEAD_POOLINGS)
    _choice("export", config.export, EXPORTS)
    _choice("export_tflite", config.export_tflite, TFLITE_MODES)
    if config.export_tflite != "none" and config.model_fn:
        raise UsageError("--export_tflite applies to the built-in models, not --model_fn; convert yours with "
                         "python -m trainer.export_tflite or tf.lite.TFLiteConverter")
    if config.loss is not None:
        _choice("loss", config.loss, LOSSES)
        fits = COMPATIBLE_LOSSES[config.label_mode]
        if config.loss not in fits:
            raise UsageError(f"--loss={config.loss} does not fit --label_mode={config.label_mode}; use "
                             f"{' or '.join(fits)} (or leave --loss out), or change --label_mode")
    _validate_recipe(config)
    if not 0 <= config.seed <= MAX_SEED:
        raise UsageError(f"--seed={config.seed} must be between 0 and {MAX_SEED}")
    for flag in ("batch_size", "train_steps", "save_checkpoints_steps", "keep_checkpoint_max"):
        if getattr(config, flag) <= 0:
            raise UsageError(f"--{flag}={getattr(config, flag)} must be a positive integer")
    if config.eval_steps is not None and config.eval_steps <= 0:
        raise UsageError(f"--eval_steps={config.eval_steps} must be positive (leave it out to "
                         "evaluate the whole validation split)")
    if config.eval_throttle_secs < 0:
        raise UsageError(f"--eval_throttle_secs={config.eval_throttle_secs} must be >= 0")
    if not 0.0 < config.validation_split < 1.0:
        raise UsageError(f"--validation_split={config.validation_split} must be between 0 and 1 (exclusive)")
    if not 0.0 <= config.dropout < 1.0:
        raise UsageError(f"--dropout={config.dropout} must be in [0, 1)")
    if config.learning_rate <= 0:
        raise UsageError(f"--learning_rate={config.learning_rate} must be positive")
    if config.image_size < 0 or 0 < config.image_size < 8:
        raise UsageError(f"--image_size={config.image_size} must be at least 8 (or 0 for the default)")
    if any(u <= 0 for u in config.head_units):
        raise UsageError(f"--head_units={','.join(map(str, config.head_units))} must be positive widths")
    if config.num_classes is not None and config.num_classes < 2:
        raise UsageError(f"--num_classes={config.num_classes} must be at least 2")
    if config.label_mode == "binary" and config.num_classes not in (None, 2):
        raise UsageError(f"--label_mode=binary needs exactly 2 classes, not --num_classes={config.num_classes}")
    if config.drop_layers < 1:
        raise UsageError(f"--drop_layers={config.drop_layers} must be at least 1")
    if config.base_model and config.model_fn:
        raise UsageError("--base_model and --model_fn exclude each other: give one")
    if config.model_fn and ":" not in config.model_fn:
        raise UsageError(f"--model_fn={config.model_fn} must look like package.module:function")
    if config.num_cpu_replicas < 0 or (config.num_gpus is not None and config.num_gpus < 0):
        raise UsageError("--num_cpu_replicas and --num_gpus must be >= 0")
    if config.steps_per_execution < 0:
        raise UsageError(f"--steps_per_execution={config.steps_per_execution} must be 0 (auto) or positive")
    if config.tpu_iterations_per_loop <= 0:
        raise UsageError(f"--tpu_iterations_per_loop={config.tpu_iterations_per_loop} must be positive")
    if config.max_image_mb < 1:
        raise UsageError(f"--max_image_mb={config.max_image_mb} must be at least 1")
    if not 0.0 <= config.max_bad_fraction <= 1.0:
        raise UsageError(f"--max_bad_fraction={config.max_bad_fraction} must be in [0, 1]")
    if len(set(config.classes)) != len(config.classes):
        raise UsageError(f"--classes={','.join(config.classes)} names a class twice")
    if config.freeze is not None:
        parse_freeze(config.freeze)
    if config.sync_checkpoints_to and not config.sync_checkpoints_to.startswith("gs://"):
        raise UsageError(f"--sync_checkpoints_to={config.sync_checkpoints_to} must be a gs:// URI")
    _choice("promote_metric", config.promote_metric, metric_registry.names())
    _choice("calibrate", config.calibrate, CALIBRATIONS)
    if config.promote_margin < 0:
        raise UsageError(f"--promote_margin={config.promote_margin} must be >= 0")
    if config.promote_test is not None:
        _choice("promote_test", config.promote_test, PROMOTE_TESTS)
    if config.promote_test == "mcnemar" and config.promote_metric != "accuracy":
        raise UsageError(f"--promote_test=mcnemar compares accuracy; --promote_metric={config.promote_metric} needs "
                         "--promote_test=bootstrap (or leave --promote_test unset)")
    if not 0.5 <= config.promote_confidence < 1:
        raise UsageError(f"--promote_confidence={config.promote_confidence} must be in [0.5, 1), e.g. 0.95")
    if config.promote_max_class_drop is not None and not 0 <= config.promote_max_class_drop <= 1:
        raise UsageError(f"--promote_max_class_drop={config.promote_max_class_drop} must be in [0, 1] (a fall in a "
                         "class's recall)")
    if not config.promote and not config.champion_dir:
        raise UsageError("--promote=false needs --champion_dir: the gate it records compares against that folder's "
                         "champion")
    if config.warm_start_from == "champion" and not config.champion_dir:
        raise UsageError("--warm_start_from=champion needs --champion_dir")
    changes = {flag: os.path.expanduser(getattr(config, flag)) for flag in PATH_FLAGS
               if getattr(config, flag) and getattr(config, flag).startswith("~")}
    config = dataclasses.replace(config, **changes)
    run_id = ""
    if config.unique_run_dir:
        # Vertex restarts a preempted job with the same environment: its job id keeps the folder stable.
        # Elsewhere two runs may start in the same second: a random suffix keeps their folders apart.
        run_id = os.environ.get("CLOUD_ML_JOB_ID") or (time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" +
                                                       uuid.uuid4().hex[:6])
    model_dir = config.model_dir or default_model_dir()
    changes["model_dir"] = to_gcs_uri(os.path.join(model_dir, run_id) if run_id else model_dir)
    changes["unique_run_dir"] = False  # Applied: validating again must not add another level.
    checkpoint_dir = config.checkpoint_dir
    if checkpoint_dir and run_id:  # Each unique run its own checkpoints too (wrappers trial B2: it resumed the last's).
        checkpoint_dir = os.path.join(checkpoint_dir, run_id)
    if not checkpoint_dir and not config.model_dir and os.environ.get("AIP_CHECKPOINT_DIR"):
        checkpoint_dir = os.path.join(os.environ["AIP_CHECKPOINT_DIR"], run_id) if run_id else \
            os.environ["AIP_CHECKPOINT_DIR"]
    changes["checkpoint_dir"] = to_gcs_uri(checkpoint_dir) or changes["model_dir"]
    changes["tensorboard_dir"] = to_gcs_uri(config.tensorboard_dir or os.environ.get("AIP_TENSORBOARD_LOG_DIR") or None)
    changes["hypertune_metric"] = config.hypertune_metric or os.environ.get("CLOUD_ML_HP_METRIC_TAG") or None
    if changes["hypertune_metric"] and changes["hypertune_metric"] not in metric_registry.names():
        where = "--hypertune_metric" if config.hypertune_metric else "$CLOUD_ML_HP_METRIC_TAG"
        raise UsageError(f"{where}={changes['hypertune_metric']} is not a metric this run reports; "
                         f"choose one of: {metric_registry.choices()}")
    return dataclasses.replace(config, **changes)


def _validate_recipe(config: Config) -> None:
    """The fine-tuning recipe's flags (issue: epochs, schedules, phases, early stopping, regularisation)."""
    _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    for flag in ("epochs", "fine_tune_epochs", "warmup_steps", "fine_tune_steps", "early_stopping_patience",
                 "weight_decay", "clip_norm", "min_learning_rate", "early_stopping_min_delta"):
        if getattr(config, flag) < 0:
            raise UsageError(f"--{flag}={getattr(config, flag)} must be >= 0")
    if config.fine_tune_steps and config.fine_tune_epochs:
        raise UsageError("--fine_tune_steps and --fine_tune_epochs exclude each other: give one")
    if config.lr_schedule == "cosine":
        rates = [("learning_rate", config.learning_rate)]
        if config.fine_tune_steps or config.fine_tune_epochs:
            rates.append(("fine_tune_learning_rate", config.fine_tune_learning_rate or config.learning_rate / 10.0))
        for flag, rate in rates:
            if config.min_learning_rate >= rate:
                given = "" if flag == "learning_rate" or config.fine_tune_learning_rate else " (--learning_rate / 10)"
                raise UsageError(f"--min_learning_rate={config.min_learning_rate} must be below --{flag}={rate:g}"
                                 f"{given}: cosine decays each phase from its rate to the minimum")
    if not 0.0 < config.lr_decay_rate <= 1.0:
        raise UsageError(f"--lr_decay_rate={config.lr_decay_rate} must be in (0, 1]")
    if config.lr_decay_steps <= 0:
        raise UsageError(f"--lr_decay_steps={config.lr_decay_steps} must be positive")
    if config.fine_tune_learning_rate is not None and config.fine_tune_learning_rate <= 0:
        raise UsageError(f"--fine_tune_learning_rate={config.fine_tune_learning_rate} must be positive")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise UsageError(f"--label_smoothing={config.label_smoothing} must be in [0, 1)")
    if config.top_k < 1:
        raise UsageError(f"--top_k={config.top_k} must be at least 1")
    _choice("early_stopping_metric", config.early_stopping_metric, metric_registry.names())
    if config.class_weight not in ("none", "balanced") and not config.class_weight.endswith(".json"):
        raise UsageError(f"--class_weight={config.class_weight} is not valid; use none, balanced or a .json file "
                         "mapping class names to weights")
    parse_freeze(config.fine_tune_freeze, "fine_tune_freeze")
    if config.early_stopping_patience and config.export != "best":
        raise UsageError(f"--early_stopping_patience keeps the best model: it needs --export=best, not "
                         f"--export={config.export}")
    if not 0.0 < config.layer_lr_decay <= 1.0:
        raise UsageError(f"--layer_lr_decay={config.layer_lr_decay} must be in (0, 1]: each trunk layer down from "
                         "the head trains at that factor of the rate above it (1: off)")
    if config.layer_lr_decay != 1.0 and config.model_fn:
        raise UsageError("--layer_lr_decay rates the layers of a built-in trunk; a --model_fn model has none "
                         "(drop --layer_lr_decay)")
    _choice("tta", config.tta, TTA_KINDS)
    if not 0.0 <= config.ema_decay < 1.0:
        raise UsageError(f"--ema_decay={config.ema_decay} must be in [0, 1) (0: off; timm uses 0.9998, Model Garden "
                         "0.99)")
    if config.ema_decay and config.strategy == "tpu":
        raise UsageError("--ema_decay is not supported with --strategy=tpu (TPUEstimator's own training loop)")
    if config.tta != "none" and config.model_fn:
        raise UsageError("--tta flips and crops images of the built-in image models, not --model_fn inputs (drop --tta)")
    if config.augment and config.model_fn:  # Its inputs are fed as they are: --augment was ignored, silently.
        raise UsageError("--augment applies to the built-in image models, not --model_fn (whose inputs are fed as "
                         "they are): augment in your model, or drop --augment")
    if (config.fine_tune_steps or config.fine_tune_epochs) and config.cache_features:
        raise UsageError("--fine_tune_steps/--fine_tune_epochs train the trunk, which --cache_features cannot "
                         "(it computes the frozen trunk's outputs once): run the cached head training first, then "
                         "fine-tune in a new --model_dir with --warm_start_from=<its model_dir>")


def to_gcs_uri(path: Optional[str]) -> Optional[str]:
    """/gcs/BUCKET/... (Cloud Storage FUSE on Vertex AI) -> gs://BUCKET/...; other paths unchanged.

    TensorFlow reads and writes gs:// directly, which is faster and more robust for
    checkpoints than the FUSE mount.
    """
    if path and path.startswith("/gcs/"):
        return "gs://" + path[len("/gcs/"):]
    return path


def parse_augment(spec: str) -> Tuple[Tuple, ...]:
    """Parses --augment=flip,rotate:0.1,randaugment:2:9 into ((op, amount, ...), ...): an op that takes no amount
    is (op, 0.0), one with several (op, a, b)."""
    ops = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, *written = item.split(":")
        op = augmentations.get(name)  # The registry: trainer/augmentations.py.
        if op is None:
            raise UsageError(f"--augment: unknown operation '{name}'; choose from: {', '.join(augmentations.names())}")
        amounts = op.spec()
        if not amounts and written:
            raise UsageError(f"--augment: '{item}': {name} takes no amount ({op.help}); write {name}")
        if name in (o[0] for o in ops):  # Wrappers trial U1: only the last of two applied, silently.
            raise UsageError(f"--augment: '{name}' is given twice; give each operation once")
        if len(written) > len(amounts):
            raise UsageError(f"--augment: '{item}': {name} takes {len(amounts)} number(s) after its name ({op.help})")
        if any(not w for w in written):  # Wrappers trial U1: `rotate:` trained with the default amount, silently.
            defaults = ":".join(f"{a.default:g}" for a in amounts)
            raise UsageError(f"--augment: '{item}' needs a number after the colon (or write {name} alone for "
                             f"{defaults})")
        values = []
        for amount, text in zip(amounts, written + [None] * (len(amounts) - len(written))):
            try:
                value = float(text) if text is not None else float(amount.default)
            except ValueError:
                raise UsageError(f"--augment: '{item}' needs a number after the colon") from None
            wrong = amount.check(value) if math.isfinite(value) else f"a finite {amount.name}"
            if wrong:
                raise UsageError(f"--augment: '{item}' needs {wrong}" if op.amounts else
                                 f"--augment: '{item}' needs an amount between 0 and 1 (a fraction)")
            values.append(value)
        ops.append((name, *values) if values else (name, 0.0))
    return tuple(ops)


def parse_freeze(value: str, flag: str = "freeze"):
    """Parses --freeze: 'all', 'none' or an integer (negative counts from the end)."""
    if value in ("all", "none"):
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--{flag}={value} is not valid; use all, none, N (freeze the first N trunk "
                         "layers) or -N (train only the last N)") from None


def show_value(value) -> str:
    """A recipe value as a flag takes it (run_info.json keeps --augment as a list of ops)."""
    value = json.loads(json.dumps(value))
    if isinstance(value, list) and value and all(isinstance(v, list) and len(v) >= 2 and isinstance(v[0], str)
                                                 for v in value):
        # --augment as typed (wrappers trial U2 showed `flip,0.0`): flip,rotate:0.1,randaugment:2:9.
        return ",".join(_show_op(op) for op in value)
    if isinstance(value, list):
        return ",".join(show_value(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _show_op(op) -> str:
    known = augmentations.get(op[0])
    if known is not None and not known.spec():
        return op[0]
    return ":".join([op[0]] + [f"{a:g}" for a in op[1:]])
