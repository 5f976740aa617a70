"""Early stopping on an evaluation metric, with a memory that survives restarts.

`Watcher` is an Estimator exporter (exporters are what train_and_evaluate calls
with each evaluation's results, on whichever task evaluates). It keeps the
history in `<model_dir>/early_stopping.json` (best value, its step, evaluations
without improvement, and the step it stopped at), so a restarted run neither
forgets its patience nor trains past a stop. `StopHook` ends training once the
watcher has decided. Evaluations follow checkpoints (`--save_checkpoints_steps`,
at most one per `--eval_throttle_secs`): patience counts evaluations, not steps.
"""
import os
from typing import Optional

import tensorflow as tf
from absl import logging

from trainer.util import files

STATE_FILE = "early_stopping.json"


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def read_state(model_dir: str) -> dict:
    try:
        state = files.read_json(os.path.join(model_dir, STATE_FILE)) or {}
    except (ValueError, UnicodeDecodeError):
        return {}  # Unreadable: start counting again rather than fail the run.
    return state if isinstance(state, dict) else {}  # A JSON value that is not an object: the same.


class Watcher(tf.estimator.Exporter):
    """Counts evaluations without improvement; decides to stop after `patience` of them."""

    def __init__(self, model_dir: str, metric: str, patience: int, min_delta: float):
        self._path = os.path.join(model_dir, STATE_FILE)
        self._model_dir = model_dir
        self._metric, self._patience, self._min_delta = metric, patience, min_delta

    @property
    def name(self) -> str:
        return "early_stopping"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        if self._metric not in eval_result:
            logging.warning("early stopping: no metric %s in this evaluation (%s)", self._metric, sorted(eval_result))
            return None
        state = read_state(self._model_dir)
        value, step = float(eval_result[self._metric]), int(eval_result.get("global_step", 0))
        if step <= state.get("last_step", -1):
            return None  # The same evaluation again (a restart re-evaluates its first checkpoint).
        best = state.get("best")
        better = best is None or (value < best - self._min_delta if lower_is_better(self._metric)
                                  else value > best + self._min_delta)
        if better:
            state.update(best=value, best_step=step, bad_evaluations=0)
        else:
            state["bad_evaluations"] = state.get("bad_evaluations", 0) + 1
        state.update(metric=self._metric, last_step=step, patience=self._patience)
        if state["bad_evaluations"] >= self._patience and not state.get("stopped_at_step"):
            state["stopped_at_step"] = step
            # Said by the evaluation's reporter, after this evaluation's own line (trial c086: it came before).
            state["message"] = (f"early stopping at step {step}: {self._metric} has not improved on "
                                f"{state['best']:.4f} (step {state['best_step']}) for {self._patience} evaluations")
        files.write_json(self._path, state)
        return None


def stopped_at(model_dir: str) -> Optional[int]:
    return read_state(model_dir).get("stopped_at_step")


def decision_at(model_dir: str, step: int) -> Optional[str]:
    """The early-stopping decision taken at the evaluation of `step`, as a console line, or None."""
    state = read_state(model_dir)
    return state.get("message") if state.get("stopped_at_step") == step else None


class StopHook(tf.estimator.SessionRunHook):
    """Requests a stop once the watcher has decided (checked every few steps; the file may be remote)."""

    def __init__(self, model_dir: str, every_steps: int = 10):
        self._model_dir, self._every = model_dir, every_steps

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.estimator.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        # At global steps (not steps since this process started): a restarted run stops where an uninterrupted one does.
        if int(run_values.results) % self._every == 0 and stopped_at(self._model_dir) is not None:
            run_context.request_stop()
