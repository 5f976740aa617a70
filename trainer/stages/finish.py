"""Stage 3 of a run (the chief): the last evaluation, the served model chosen (the best export's, with
--export=best) and calibrated (--calibrate: trainer.stages.calibrate), keras_model.h5 and eval_metrics.json of
that model, the SavedModel path (export/calibrated/ when calibrated), then promotion
(--champion_dir), TFLite (--export_tflite), the final run_info.json, report.html and the summary line."""
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from trainer.config import Config
from trainer.errors import NumericError
from trainer.outputs import export, metrics, report, test_time
from trainer.retrain import promotion
from trainer.run import early_stopping, phases
from trainer.stages import calibrate
from trainer.util import console, events, faultpoints, files


def finish(run, engine, eval_metrics: Optional[dict]) -> dict:
    config, run_info = run.config, run.run_info
    apart = run.plan.name in engine.finishes_apart_under
    if (apart or not run.steps) and not run.cache:  # The model as the last phase built it (anew: apart).
        run.model, run.built = phases.model_for(config, run.num_classes, run.image_shape, run.planned[-1],
                                                run.model, None if apart else run.built,
                                                lambda: engine.scope(finishing=True))
    faultpoints.reached("finish_evaluation")
    eval_metrics = _to_builtin(engine.final_evaluation(run, eval_metrics))
    checkpoint = _finite_checkpoint(config)
    matrix = eval_metrics.pop("confusion_matrix", None)  # Of the final evaluation (trainer.outputs.metrics).
    best = export.read_best_record(os.path.join(config.checkpoint_dir, "export", "best"))
    # eval_metrics.json describes the served model at its top level (its step included); the last evaluation,
    # when it is another step, goes under `last_evaluation` (trial c075/c017: the two were mixed).
    served = dict(eval_metrics, served_model=config.export)
    if config.export == "best" and best:
        # keras_model.h5 (and so promotion, which evaluates it) and the per-class figures describe the model
        # that is served: the best evaluation's, whose export holds its weights under the same names.
        checkpoint = export.export_weights(best["export"])
        served = dict(best["metrics"], served_model="best", export_metrics=best["metrics"])
        if best["metrics"].get("global_step") != eval_metrics.get("global_step"):
            served["last_evaluation"] = dict(eval_metrics)
        matrix = best.get("confusion_matrix")
        if config.early_stopping_patience:  # Early stopping reports the best model as the result.
            eval_metrics.update(best["metrics"])
    if config.early_stopping_patience:
        run_info["early_stopped_at_step"] = stopped = early_stopping.stopped_at(config.model_dir)
        for record in run_info.get("phases") or []:  # New-user trial c077: the phase it stopped in says so.
            if stopped is not None and isinstance(record, dict) and record.get("first_step", stopped) < stopped \
                    <= record.get("last_step", stopped):
                record["stopped_at_step"] = stopped
    # With --cache_features the checkpoint restores the head, and the full model (its trunk inside) is written.
    keras_h5 = os.path.join(config.model_dir, "keras_model.h5")
    export.save_keras_model(run.model, checkpoint, keras_h5, full_model=run.full_model if run.cache else None)
    calibrated = calibrated_predictions = None
    if config.calibrate == "temperature":  # The served model's probabilities, calibrated (its classes unchanged).
        faultpoints.reached("finish_calibration")
        checkpoint, served["calibration"], calibrated_predictions = calibrate.calibrate(run, checkpoint, keras_h5)
        if served["calibration"]["method"] == "temperature":
            calibrated = checkpoint
            export.save_keras_model(run.model, checkpoint, keras_h5, full_model=run.full_model if run.cache else None)
    if config.tta != "none":  # The served model (calibrated when it is), plain and averaged over the views.
        served["tta"] = test_time.evaluate(keras_h5, run.make_input(run.dataset.validation, False), config.label_mode,
                                           config.tta)
        tta = served["tta"]
        console.say("test-time augmentation (%s, %d views): accuracy %.4f -> %.4f, NLL %.4f -> %.4f (n=%d)",
                    tta["views"], tta["n_views"], tta["plain"]["accuracy"], tta["accuracy"], tta["plain"]["nll"],
                    tta["nll"], tta["n"])
    if matrix is not None:
        served.update(metrics.from_confusion(matrix, run.dataset.class_names))
    files.write_json(os.path.join(config.model_dir, "eval_metrics.json"), served)
    faultpoints.reached("finish_export")
    if calibrated:
        export_path = calibrate.export_calibrated(engine, run, calibrated, served["calibration"])
    else:
        export_path = export.latest_export(config.checkpoint_dir, config.export) or engine.export(run, checkpoint)
    if config.checkpoint_dir != config.model_dir:  # Vertex imports models from AIP_MODEL_DIR.
        kind = os.path.basename(os.path.dirname(export_path.rstrip("/")))  # --export's folder, or calibrated.
        export_path = files.copy_tree(export_path, os.path.join(
            config.model_dir, "export", kind, os.path.basename(export_path.rstrip("/"))))
    if config.tensorboard_dir:
        events.copy_event_files(config.checkpoint_dir, config.tensorboard_dir)
    # The report's predictions: those the served model's evaluation kept (trainer.outputs.metrics.collected);
    # else the engine's (a cached run's head on the cached validation features: no trunk pass), else a pass.
    served_step = best["metrics"].get("global_step") if config.export == "best" and best else \
        eval_metrics.get("global_step")
    collected = metrics.collected(config.checkpoint_dir, served_step) if served_step is not None else None

    def predict():  # The calibrated model's own when it was calibrated (the evaluation's are as trained).
        if calibrated_predictions is not None:
            return calibrated_predictions
        return collected if collected is not None else engine.predictions(run, checkpoint)

    return _finish(config, run_info, run.info_path, eval_metrics, export_path,
                   run.make_input(run.dataset.validation, False), run.started, run.full_model, run.dataset, predict)


def _summary_line(eval_metrics: dict, model_dir: str, export_path: Optional[str]) -> dict:
    keys = ("accuracy", "loss", "global_step")
    summary = {k: eval_metrics[k] for k in keys if k in eval_metrics}
    summary.update(model_dir=model_dir, export=export_path)
    return summary



def _to_builtin(metrics: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in metrics.items()}



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
        faultpoints.reached("finish_promotion")
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
    faultpoints.reached("finish_report")
    report.at_end(config, model, dataset, eval_input_fn, eval_metrics, summary, time.time() - started, predict)
    metrics.forget_collected(config.checkpoint_dir)  # Their one use; a long-lived process keeps nothing.
    return summary
