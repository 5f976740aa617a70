"""After training: score challenger and champion on this run's evaluation data, promote or not.

Both models predict the same examples the same way (their keras_model.h5, this run's evaluation input pipeline),
so the comparison is fair even when the champion was trained on older data; the gate (trainer.retrain.gate) then
asks whether the challenger is better beyond chance. Also: `--warm_start_from`, the weights a new run starts from.
"""
import os
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

from trainer.outputs import metrics
from trainer.retrain import champion_store as champion
from trainer.retrain import gate
from trainer.util import console
from trainer.model import ema, models
from trainer.model.keras_files import load_keras
from trainer.config import Config
from trainer.errors import UsageError


def load_champion(store, version: str) -> Tuple[Optional[tf.keras.Model], Optional[str]]:
    """(the champion's Keras model, None), or (None, why it cannot be loaded: a missing, truncated or garbage
    keras_model.h5, or one of another Keras this one cannot read). Cloud Storage not answering is raised, not a
    broken champion."""
    model, broken, _ = load_champion_at(store, version)
    return model, broken


def load_champion_at(store, version: str):
    """(model, None, path) or (None, why not, path or None)."""
    try:
        path = store.keras_model(version)  # On Cloud Storage: downloaded (a missing object is a UsageError).
    except UsageError as e:
        return None, str(e), None
    try:
        return load_keras(path), None, path
    except Exception as e:  # noqa: BLE001 - whatever h5py or Keras raise, the file cannot serve as a model.
        if champion.network_failure(e):
            raise
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        return None, f"{type(e).__name__}: {first}" if first else type(e).__name__, path


def runtime_versions() -> dict:
    """This runtime's TensorFlow and Keras versions (recorded with each champion)."""
    from trainer.model.keras_files import keras_version

    return {"tf_version": tf.__version__, "keras_version": keras_version()}


def other_runtime(store, version: str, path: Optional[str]) -> Optional[dict]:
    """When the champion's keras_model.h5 is a sound file written by another Keras whose model config this one
    cannot deserialize (a version mismatch, not damage): {"keras_version", "tf_version"} it was written with
    (tf_version from its metrics.json; None when not recorded). Else None (missing, truncated, garbage, or a
    config this Keras reads, so what fails is the file's weights)."""
    import json

    from trainer.model import keras_files

    if not path:
        return None
    config = keras_files.read_model_config(path)
    written = keras_files.file_versions(path).get("keras_version")
    here = runtime_versions()["keras_version"]
    if config is None or not written or written == here:
        return None
    try:  # The architecture alone: if this Keras builds it, the file's weights are what is damaged.
        tf.keras.models.model_from_json(json.dumps(keras_files.sanitized(config)[0]))
        return None
    except Exception:  # noqa: BLE001 - any refusal of the config is the mismatch.
        pass
    try:
        recorded = store.metrics(version).get("tf_version")
    except Exception as e:  # noqa: BLE001 - an unreadable metrics.json only loses the TensorFlow version.
        if champion.network_failure(e):
            raise
        recorded = None
    return {"keras_version": written, "tf_version": recorded}


def evaluate_keras(path, input_fn: Callable, config: Config) -> dict:
    """Loss and accuracy (Keras evaluate), plus the scalar metrics of trainer.outputs.metrics for single-output
    classifiers, so --promote_metric may name any of them. `path`: a keras_model.h5 or a loaded model."""

    model = load_keras(path)
    models.compile_model(model, config)
    result = {k: float(v) for k, v in model.evaluate(input_fn(), verbose=0, return_dict=True).items()}
    if len(model.outputs) == 1:
        probabilities, ids = metrics.predict_split(model, input_fn, config.label_mode)
        k = 2 if config.label_mode == "binary" else probabilities.shape[-1]
        extra = metrics.from_predictions(probabilities, ids, [str(i) for i in range(k)], config.top_k,
                                         binary=config.label_mode == "binary")
        result.update({name: float(extra[name]) for name in ("macro_f1", "top_k_accuracy", "auc")
                       if extra.get(name) is not None})
    return result


def _outputs(model: tf.keras.Model) -> list:
    """The shape of each output of a model, without the batch dimension: [[10]], [[1]] (binary)."""
    return [[int(d) if d is not None else None for d in o.shape[1:]] for o in model.outputs]


def _flipped(model: tf.keras.Model) -> tf.keras.Model:
    """A binary model read the other way round: its output is P(its class 1); this gives P(its class 0)."""
    return tf.keras.Model(model.inputs, tf.keras.layers.Lambda(lambda p: 1.0 - p)(model.outputs[0]))


def run(config: Config, model_dir: str, export_path: str, eval_input_fn: Callable, class_names=None) -> dict:
    """Decides and, if the challenger wins, promotes it. Returns the record for run_info.json.

    Every decision is printed as one `promotion: ...` line saying what was compared. When the champion
    was trained on other classes (and 2 or more are shared), both models are scored on all of this run's
    evaluation examples, each from its own outputs matched by class name (never by index): the classes the
    champion does not know get probability 0 from it (their examples count as wrong for it), the ones it
    knows that this run lacks are dropped. When the champion's classes are unknown (an older metrics.json),
    the models are compared by output index only if they have the same outputs, and the line says so. A
    champion whose keras_model.h5 cannot be loaded (missing, truncated, garbage) is replaced; one that is a
    sound file of another Keras this runtime cannot read is kept, and the line says which runtime wrote it.

    Raises:
        UsageError: Cloud Storage stopped answering (one line: what was left where).
    """
    retry = f"the trained model is kept in {model_dir}: run the same command again to retry the promotion"
    try:
        return _run(config, model_dir, export_path, eval_input_fn, class_names)
    except champion.Unreachable as e:
        raise UsageError(f"{e}; {retry}") from None
    except UsageError:
        raise
    except Exception as e:
        detail = champion.network_failure(e)
        if detail is None:
            raise
        raise UsageError(f"--champion_dir={config.champion_dir}: Cloud Storage became unreachable during "
                         f"promotion ({detail}); nothing was promoted, CHAMPION.json is unchanged; {retry}") \
            from None


def _run(config: Config, model_dir: str, export_path: str, eval_input_fn: Callable, class_names=None) -> dict:
    metric = config.promote_metric
    store = champion.open_store(config.champion_dir)
    pointer, token = champion.read_current(store, config.champion_dir, token=True)
    keras_h5 = os.path.join(model_dir, "keras_model.h5")
    mine_model = load_keras(keras_h5)
    challenger = evaluate_keras(mine_model, eval_input_fn, config)
    record = {"promoted": False, "metric": metric, "challenger": challenger.get(metric), "champion": None,
              "champion_version": pointer["version"] if pointer else None}

    def decided(reason: str) -> dict:
        record.setdefault("decision", "promote" if record["promoted"] else "keep")
        record["reason"] = reason
        console.say("promotion: %s (%s)", "promoted" if record["promoted"] else "not promoted", reason)
        return record

    if metric not in challenger:
        return decided(f"the challenger has no metric {metric} (it has {', '.join(sorted(challenger))})")
    promote = True
    if pointer and pointer.get("source_run") == model_dir and (pointer.get("metrics") or {}).get(metric) == \
            challenger.get(metric):
        # This run promoted itself before a restart (killed after the pointer moved, before run_info.json).
        record.update(promoted=True, version=pointer["version"], champion=None, champion_version=pointer.get(
            "previous"))
        return decided(f"already promoted by this run as version {pointer['version']}, before a restart")
    if pointer:
        version = pointer["version"]
        champion_model, broken, path = load_champion_at(store, version)
        foreign = other_runtime(store, version, path) if broken else None
        if foreign:
            # A sound champion of the other runtime: replacing it without a comparison would bypass the gate.
            written = f"Keras {foreign['keras_version']}" + (
                f" (TensorFlow {foreign['tf_version']})" if foreign.get("tf_version") else "")
            here = runtime_versions()
            record.update(champion_unloadable=broken, champion_keras_version=foreign["keras_version"],
                          champion_tf_version=foreign.get("tf_version"), compared_by="none")
            return decided(f"the champion version {version} was written by {written} and cannot be loaded here, "
                           f"Keras {here['keras_version']} (TensorFlow {here['tf_version']}) ({broken}); run this "
                           f"retraining on that runtime, or roll back with `python -m trainer.champion rollback "
                           f"--champion_dir={config.champion_dir}`")
        if broken:
            # A champion that cannot be loaded cannot be compared, served or warm-started from: keeping it would
            # block every later retrain. The challenger takes its place, and the record says why.
            record.update(champion_unloadable=broken, compared_by="none")
            promote, reason = True, (f"the champion version {version} cannot be loaded ({broken}); replaced "
                                     "without a comparison")
        else:
            outcome = _compare(config, metric, record, store, version, champion_model, mine_model,
                               list(class_names or []), eval_input_fn)
            if isinstance(outcome, str):
                return decided(outcome)
            promote, reason = outcome
    else:
        promote, reason = champion.decide(metric, record["challenger"], None, config.promote_margin)
    record["decision"] = "promote" if promote else "keep"
    if not promote:
        return decided(reason)
    version_metrics = {**challenger, "metric": metric, "class_names": list(class_names or []),
                       **({"gate": record["gate"]} if record.get("gate") else {}),
                       "calibration_temperature": source_temperature(keras_h5), **runtime_versions()}
    if not config.promote:
        # --promote=false: the decision is put on record; `python -m trainer.champion promote` (the pipeline's
        # promote step) applies it while CHAMPION.json still names the champion gated against.
        record["pending"] = {"export": export_path, "metrics": version_metrics}
        return decided(f"{reason}; the gate passed, CHAMPION.json left as it is (--promote=false): `python -m "
                       f"trainer.champion promote --champion_dir={config.champion_dir} --model_dir={model_dir}` "
                       "promotes it")
    reason = promote_now(store, token, pointer, record, export_path, keras_h5, version_metrics, model_dir,
                         config.champion_dir, reason)
    return decided(reason)


def promote_now(store, token, pointer, record, export_path, keras_h5, version_metrics, model_dir, champion_dir,
                reason) -> str:
    """Copies the challenger into a new version and moves CHAMPION.json (the pointer read with `token`); updates
    `record`; returns the reason to print (a lost race says so)."""
    version = champion.new_version()
    console.say("promotion: copying the challenger to version %s", version)
    report = {}
    won = champion.promote(store, token, version, export_path, keras_h5, version_metrics, model_dir,
                           pointer["version"] if pointer else None,
                           champion.lineage(pointer) + [pointer["version"]] if pointer else [], report=report)
    record.update(promoted=won, version=version)
    if not won:
        where = f"{champion_dir.rstrip('/')}/{version}"
        left = (f"its copy {where} was removed" if report.get("removed") else
                f"its copy {where} could not be removed ({report.get('error')}): remove it by hand")
        record.update(version=None, lost_version=version, lost_version_removed=bool(report.get("removed")))
        reason = f"another run replaced CHAMPION.json first (lost the race); not promoted; {left}"
    return reason


def _compare(config, metric, record, store, version, champion_model, mine_model, ours, eval_input_fn):
    """(promote, reason) from the gate (trainer.retrain.gate) on both models' predictions on this run's evaluation
    examples; a str: the decision not to promote, with its reason.

    Sets record["compared_by"]: "name" (the same classes, or matched by name), "index" (classes unknown, the
    same outputs) or "none" (decided without scoring the champion), and record["gate"]: the test and its figures."""
    theirs = champion_class_names(store, version)
    binary = config.label_mode == "binary"

    def predicted(model):
        probabilities, ids = metrics.predict_split(model, eval_input_fn, config.label_mode)
        return two_columns(probabilities) if binary else np.asarray(probabilities, np.float64), ids

    def gated(model, classes, note="", model_classes=None, known=None):
        try:
            mine, ids = predicted(mine_model)
            their, _ = predicted(model)
            if model_classes is not None:  # Each model's columns read by class name, over this run's classes.
                mine, ids = aligned(mine, ids, classes, classes, classes)
                their, _ = aligned(their, _, model_classes, classes, classes)
        except (ValueError, OSError, tf.errors.OpError) as e:
            return _unscorable(version, e)
        return _gate(config, metric, record, mine, their, ids, classes, known, note)

    if not theirs or not ours:
        # Classes unknown (an older champion's metrics.json, or a run without class names): by output index,
        # and only when the outputs match.
        whose = ("the champion's classes are unknown (no class_names in its metrics.json)" if not theirs else
                 "this run's classes are unknown")
        mine, their = _outputs(mine_model), _outputs(champion_model)
        record.update(champion_classes=theirs, compared_by="index" if mine == their else "none")
        if mine != their:
            return True, (f"{whose}, and the champion {version} has outputs {their} where this run's model has "
                          f"{mine}: they cannot be compared, so the challenger is promoted")
        width = 2 if binary else mine[0][-1]
        return gated(champion_model, list(ours) or [str(i) for i in range(width)],
                     f"; {whose}: compared by output index, both models having outputs {mine}")
    if theirs == ours:
        record["compared_by"] = "name"
        return gated(champion_model, list(ours))
    record["champion_classes"] = theirs
    if binary:
        if len(theirs) == len(ours) == 2 and sorted(theirs) == sorted(ours) and len(champion_model.outputs) == 1 \
                and _outputs(champion_model) == [[1]]:
            record["compared_by"] = "name"
            return gated(_flipped(champion_model), list(ours),
                         f"; the champion's classes are this run's in the other order ({','.join(theirs)}): its "
                         "output is read by class name")
        record["compared_by"] = "none"
        return True, (f"the champion {version} is a binary model of other classes ({','.join(theirs)}) than this "
                      f"run's ({','.join(ours)}): promoted without a champion comparison")
    shared = [c for c in ours if c in theirs]
    if len(shared) < 2:
        record.update(compared_on_classes=shared, compared_by="none")
        return True, (f"the champion {version} knows the classes {','.join(theirs)}, of which {len(shared)} are this "
                      f"run's ({','.join(ours)}): it cannot be scored on this data, so the challenger, the only model "
                      "of this class set, is promoted")
    if metric not in ("accuracy", "loss", "macro_f1"):  # top-k or AUC would credit classes a model never knew.
        return (f"--promote_metric={metric} cannot be compared across other class sets; use accuracy, loss or "
                "macro_f1")
    # All of this run's examples, for both models: a class the champion does not know counts as wrong for it, so a
    # challenger that also predicts a new class wins a tie on the shared ones (never stuck on the old champion).
    unknown = [c for c in ours if c not in theirs]
    dropped = [c for c in theirs if c not in ours]
    record.update(compared_on_classes=list(ours), champion_unknown_classes=unknown, compared_by="name")
    if not unknown:
        note = f"; compared on the {len(shared)} classes both know ({','.join(shared)})"
    else:
        lacks = f"; its outputs of {','.join(dropped)}, which this run lacks, left out" if dropped else ""
        note = (f"; compared on this run's {len(ours)} classes (the champion does not know {','.join(unknown)}: its "
                f"examples count as wrong for it{lacks})")
    return gated(champion_model, list(ours), note, model_classes=theirs, known=[c in theirs for c in ours])


def _gate(config, metric, record, mine, their, ids, classes, known, note):
    """The gate's verdict on aligned predictions, put on record; (promote, reason) or a str (not comparable)."""
    try:
        verdict = gate.decide(mine, their, ids, classes, metric, config.promote_test, config.promote_confidence,
                              config.promote_margin, config.promote_max_class_drop, config.seed, config.top_k, known)
    except ValueError as e:  # The metric cannot be computed on these predictions (e.g. no example of a class).
        return f"--promote_metric={metric} cannot be compared here ({e}); not promoting"
    if verdict["challenger"] is None or verdict["champion"] is None:
        return (f"--promote_metric={metric} cannot be compared on these classes; use accuracy, loss or "
                "macro_f1")
    record.update(challenger=verdict["challenger"], champion=verdict["champion"])
    kept = {k: v for k, v in verdict.items() if k not in ("why", "promote", "challenger", "champion", "metric")}
    floor = kept.get("class_floor")
    if floor and len(floor["per_class"]) > 50:  # The record stays small: the failed class alone then.
        floor["per_class"] = [r for r in floor["per_class"] if r["class"] == floor["failed"]]
    record["gate"] = kept
    return verdict["promote"], verdict["why"] + note


def two_columns(probabilities) -> np.ndarray:
    """A binary model's [n, 1] (P(class 1)) as [n, 2] class probabilities."""
    p = np.asarray(probabilities, np.float64).reshape(-1, 1)
    return np.concatenate([1.0 - p, p], axis=-1)


def _unscorable(version: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return (f"the champion {version} cannot be evaluated on this run's data ({type(error).__name__}: {first}); "
            "not promoting")


def champion_class_names(store, version: str) -> Optional[list]:
    try:
        names = store.metrics(version).get("class_names")
    except (OSError, ValueError, AttributeError, tf.errors.OpError) as e:
        if champion.network_failure(e):  # requests' errors are OSErrors: an outage is no "unknown classes".
            raise
        return None
    return list(names) if names else None


def score_on_classes(path: str, model_classes, run_classes, classes, input_fn: Callable, config: Config) -> dict:
    """accuracy, loss and macro_f1 of a model on the examples of `classes` (see scores_by_name); `run_classes`
    names the label ids of `input_fn`, `model_classes` the model's output units in order."""
    model = load_keras(path)
    probabilities, ids = metrics.predict_split(model, input_fn, config.label_mode)
    return scores_by_name(probabilities, ids, model_classes, run_classes, classes, config.top_k)


def aligned(probabilities, ids, model_classes, run_classes, classes):
    """A model's `probabilities` [n, len(model_classes)] on the examples (label ids `ids` into `run_classes`) of
    `classes`, read by class name: (p [m, len(classes)], label ids into `classes`). Each class's column is the
    model's output of that name, renormalised over `classes`; a class the model does not know has probability 0,
    so its examples count as wrong for it."""
    classes, model_classes = list(classes), list(model_classes)
    true = [run_classes[i] for i in ids]
    keep = np.array([t in classes for t in true], bool)
    if not keep.any():
        raise ValueError("no evaluation example of the compared classes")
    probabilities = np.asarray(probabilities, np.float64)[keep]
    p = np.zeros((len(probabilities), len(classes)), np.float64)
    for j, name in enumerate(classes):
        if name in model_classes:
            p[:, j] = probabilities[:, model_classes.index(name)]
    known = np.array([name in model_classes for name in classes], bool)
    empty = p.sum(-1) <= 0  # All its mass on classes left out (float32 underflow): even odds over the ones it knows.
    if empty.any() and known.any():
        p[np.ix_(empty, known)] = 1.0
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    return p, np.array([classes.index(t) for t, k in zip(true, keep) if k])


def scores_by_name(probabilities, ids, model_classes, run_classes, classes, top_k: int = 5) -> dict:
    """accuracy, loss and macro_f1 of a model on the examples of `classes`, read by class name (see `aligned`;
    loss: -log(1e-12) for each example of a class the model does not know)."""
    p, y = aligned(probabilities, ids, model_classes, run_classes, classes)
    out = metrics.from_predictions(p, y, list(classes), top_k)
    out["loss"] = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
    return {k: float(out[k]) for k in ("accuracy", "loss", "macro_f1")}


def warm_start_path(config: Config) -> Optional[str]:
    """The Keras weights file (or checkpoint) --warm_start_from names; None: nothing to start from."""
    source = config.warm_start_from
    if source == "champion":
        if not config.champion_dir:
            raise UsageError("--warm_start_from=champion needs --champion_dir")
        path = champion.current_keras_model(config.champion_dir)
        if path is None:
            console.say("--warm_start_from=champion: no champion yet, starting from the usual weights")
        return path
    return source


def apply_warm_start(model: tf.keras.Model, config: Config, class_names=None) -> Optional[dict]:
    """Loads --warm_start_from weights into `model`; returns what was loaded from, for run_info.json.

    Weights are matched by name. When the source's classes are known (its run_info.json, or the
    champion's metrics.json) and differ from `class_names`, the output layer's rows of classes present
    in both are copied by class name, new classes keep their fresh initialisation and retired ones
    are dropped; the trunk and hidden head layers carry over as they are.
    """
    from trainer.cloud import gcs

    path = warm_start_path(config)
    if path is None:
        return None
    source_names = _source_class_names(path)
    local = gcs.localize(path, "warm_start_from") if path.endswith((".h5", ".hdf5")) else path
    undone = None  # The calibration temperature taken back out of a keras_model.h5 source.
    if tf.io.gfile.isdir(local):
        checkpoint = tf.train.latest_checkpoint(local)
        if checkpoint is None:
            raise UsageError(f"--warm_start_from={path} holds no checkpoint")
        reader = tf.train.load_checkpoint(checkpoint)
        # --ema_decay there: start from the averages it served.
        values = ema.served_values(reader, list(reader.get_variable_to_shape_map()))
    elif tf.io.gfile.exists(local):
        try:
            source = load_keras(local)
        except (OSError, ValueError) as e:
            raise UsageError(f"--warm_start_from={path} is not a loadable Keras model: {str(e)[:200]}") from None
        values = {w.name.split(":")[0]: w.numpy() for w in source.weights}
        temperature = source_temperature(path)
        if temperature != 1.0:  # A calibrated model: its output layer's weights as trained, not divided by T.
            for weight in source.layers[-1].weights:
                name = weight.name.split(":")[0]
                values[name] = values[name] * temperature
            undone = temperature
    else:
        raise UsageError(f"--warm_start_from={path} does not exist")
    output = model.layers[-1]
    output_weights = {w.name.split(":")[0] for w in output.weights}
    remap = (source_names is not None and class_names is not None and list(source_names) != list(class_names)
             and output.weights and output.weights[0].shape[-1] == len(class_names) and len(class_names) > 1
             and config.label_mode != "binary")
    assignments, record = [], {"path": path}
    if undone:
        record["calibration_temperature_undone"] = undone
    for weight in model.weights:
        name = weight.name.split(":")[0]
        if name not in values:
            raise UsageError(f"--warm_start_from={path} does not fit this model: it has no weight {name}")
        value = values[name]
        if remap and name in output_weights:
            value = _remap_columns(weight.numpy(), value, source_names, class_names)
        elif tuple(value.shape) != tuple(weight.shape):
            hint = "" if source_names else " (its classes are unknown: no run_info.json beside it)"
            raise UsageError(f"--warm_start_from={path} does not fit this model: {name} is {list(value.shape)} "
                             f"there, {list(weight.shape)} here{hint}")
        assignments.append((weight, value))
    tf.keras.backend.batch_set_value(assignments)
    if source_names is not None and class_names is not None:
        record.update(classes_kept=[c for c in class_names if c in source_names],
                      classes_added=[c for c in class_names if c not in source_names],
                      classes_removed=[c for c in source_names if c not in class_names])
        if remap:
            console.say("warm start: classes kept %d, added %s, removed %s", len(record["classes_kept"]),
                         record["classes_added"] or "none", record["classes_removed"] or "none")
    console.say("warm start: weights loaded from %s", path)
    return record


def _remap_columns(fresh, old, old_names, new_names):
    """The output layer's kernel [d, k] or bias [k] for the new classes, old columns copied by class name."""
    out = fresh.copy()
    for j, name in enumerate(new_names):
        if name in old_names:
            out[..., j] = old[..., list(old_names).index(name)]
    return out


def source_temperature(path: str) -> float:
    """The temperature a keras_model.h5 was calibrated with (trainer.stages.calibrate folds it into the output layer):
    from eval_metrics.json beside it (a run's), or a champion version's metrics.json; 1.0 when none was applied."""
    import json

    folder = os.path.dirname(path)
    for name in ("eval_metrics.json", "metrics.json"):
        candidate = os.path.join(folder, name)
        try:
            if not tf.io.gfile.exists(candidate):
                continue
            with tf.io.gfile.GFile(candidate) as f:
                data = json.load(f)
        except (ValueError, tf.errors.OpError):
            continue
        calibration = data.get("calibration") if isinstance(data.get("calibration"), dict) else {}
        value = data.get("calibration_temperature") or (
            calibration.get("temperature") if calibration.get("method") == "temperature" else None)
        if value:
            return float(value)
    return 1.0


def _source_class_names(path: str):
    """The class names of a warm-start source: from run_info.json beside it, or a champion's metrics.json."""
    import json

    folder = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    for name, key in (("run_info.json", "class_names"), ("metrics.json", "class_names")):
        candidate = os.path.join(folder, name)
        try:
            if tf.io.gfile.exists(candidate):
                with tf.io.gfile.GFile(candidate) as f:
                    names = json.load(f).get(key)
                if names:
                    return list(names)
        except (ValueError, tf.errors.OpError):
            continue
    return None
