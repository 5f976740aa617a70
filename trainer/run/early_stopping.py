"""Early stopping on an evaluation metric, with a memory that survives restarts.

`record` counts each evaluation (an engine calls it with every evaluation's results, on whichever task
evaluates) into `<model_dir>/early_stopping.json` (best value, its step, evaluations without improvement,
and the step it stopped at), so a restarted run neither forgets its patience nor trains past a stop; the
engine ends training once `stopped_at` says so. Evaluations follow checkpoints (`--save_checkpoints_steps`,
at most one per `--eval_throttle_secs`): patience counts evaluations, not steps.
"""
import os
from typing import Optional

from absl import logging

from trainer import metric_registry
from trainer.util import files

STATE_FILE = "early_stopping.json"


def lower_is_better(metric: str) -> bool:
    return metric_registry.lower_is_better(metric)


def read_state(model_dir: str) -> dict:
    try:
        state = files.read_json(os.path.join(model_dir, STATE_FILE)) or {}
    except (ValueError, UnicodeDecodeError):
        return {}  # Unreadable: start counting again rather than fail the run.
    return state if isinstance(state, dict) else {}  # A JSON value that is not an object: the same.


def record(model_dir: str, metric: str, patience: int, min_delta: float, eval_result: dict) -> None:
    """Counts one evaluation: better than the best by more than `min_delta`, or not; decides to stop after
    `patience` evaluations in a row without improvement. The same evaluation seen again (a restart
    re-evaluates its first checkpoint) counts once."""
    if metric not in eval_result:
        logging.warning("early stopping: no metric %s in this evaluation (%s)", metric, sorted(eval_result))
        return
    state = read_state(model_dir)
    value, step = float(eval_result[metric]), int(eval_result.get("global_step", 0))
    if step <= state.get("last_step", -1):
        return
    best = state.get("best")
    better = metric_registry.improves(value, best, metric, min_delta)
    if better:
        state.update(best=value, best_step=step, bad_evaluations=0)
    else:
        state["bad_evaluations"] = state.get("bad_evaluations", 0) + 1
    state.update(metric=metric, last_step=step, patience=patience)
    if state["bad_evaluations"] >= patience and not state.get("stopped_at_step"):
        state["stopped_at_step"] = step
        # Said by the evaluation's reporter, after this evaluation's own line (trial c086: it came before).
        state["message"] = (f"early stopping at step {step}: {metric} has not improved on {state['best']:.4f} "
                            f"(step {state['best_step']}) for {patience} evaluations")
    files.write_json(os.path.join(model_dir, STATE_FILE), state)


def stopped_at(model_dir: str) -> Optional[int]:
    return read_state(model_dir).get("stopped_at_step")


def decision_at(model_dir: str, step: int) -> Optional[str]:
    """The early-stopping decision taken at the evaluation of `step`, as a console line, or None."""
    state = read_state(model_dir)
    return state.get("message") if state.get("stopped_at_step") == step else None


