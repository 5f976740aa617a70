"""Promoting a run whose gate passed under `--promote=false` (`python -m trainer.champion promote`, the pipeline's
promote step).

The run's gate compared it with the champion CHAMPION.json named then; its decision is in run_info.json's
`promotion`. Promotion applies it only while CHAMPION.json still names that champion (the gate's comparison would
otherwise be stale), through the same copy-then-swap as a run that promotes itself. Running it again after it
promoted is a no-op that says so, so a retried pipeline step is safe.
"""
import os

from trainer.errors import UsageError
from trainer.retrain import champion_store as champion
from trainer.retrain.promotion import promote_now
from trainer.util import console, faultpoints, files

RUN_INFO = "run_info.json"


def promote_gated(champion_dir: str, model_dir: str) -> dict:
    """Applies a recorded `promote` decision; returns the promotion record (as run_info.json then holds it).

    Raises:
        UsageError: no finished run, no gate on record, or a gate against another champion folder.
    """
    model_dir = model_dir.rstrip("/")
    info = files.read_json(f"{model_dir}/{RUN_INFO}")
    if not info or "export" not in info:
        raise UsageError(f"--model_dir={model_dir} holds no finished run ({RUN_INFO} with its export)")
    record = info.get("promotion")
    flags = info.get("flags") or {}
    if not record:
        raise UsageError(f"--model_dir={model_dir} was not gated: train it with --champion_dir={champion_dir} "
                         "--promote=false")
    gated_in = _absolute((flags.get("champion_dir") or "").rstrip("/"), info.get("working_dir"))
    if gated_in and _same_place(gated_in, champion_dir) is False:
        raise UsageError(f"--model_dir={model_dir} was gated against --champion_dir={gated_in}, not {champion_dir}")
    recorded_dir = (flags.get("model_dir") or model_dir).rstrip("/")
    store = champion.open_store(champion_dir)
    pointer, token = champion.read_current(store, champion_dir, token=True)
    current = pointer["version"] if pointer else None
    if pointer and pointer.get("source_run") in (recorded_dir, model_dir):
        # Promoted before (perhaps killed before run_info.json said so): the record is brought up to date.
        record.pop("pending", None)
        record.update(promoted=True, version=current, decision="promote")
        return _said(record, f"already promoted by this run as version {current}", write=(model_dir, info))
    if record.get("promoted"):
        return _said(record, f"promoted as version {record.get('version')} when it trained; CHAMPION.json now names "
                             f"{current}")
    if record.get("decision") != "promote" or "pending" not in record:
        return _said(record, f"the gate kept the champion: {record.get('reason', 'no reason on record')}")
    if current != record.get("champion_version"):
        # The decision stays on record (it applies again should CHAMPION.json name that champion again).
        gated = record.get("champion_version")
        return _said(record, f"the champion changed since this run's gate (gated against {gated}, now {current}): "
                             "gate it again (train it again with the same --model_dir)",
                     write=(model_dir, info))
    pending = record.pop("pending")
    export = _rebased(pending["export"], recorded_dir, model_dir)
    gate_said = record.get("reason", "the gate passed").split("; the gate passed")[0]
    reason = promote_now(store, token, pointer, record, export, f"{model_dir}/keras_model.h5", pending["metrics"],
                         recorded_dir, champion_dir, gate_said)
    if not record.get("promoted"):
        record["pending"] = pending  # A lost race: the decision stays on record; run again to retry.
    faultpoints.reached("deferred_promoted")  # Tests: killed between CHAMPION.json and run_info.json.
    return _said(record, reason, write=(model_dir, info))


def _said(record: dict, reason: str, write=None) -> dict:
    record["reason"] = reason
    console.say("promotion: %s (%s)", "promoted" if record.get("promoted") else "not promoted", reason)
    if write:
        model_dir, info = write
        info["promotion"] = record
        files.write_json(f"{model_dir}/{RUN_INFO}", info)
        from trainer.outputs import report

        # After run_info.json: a promotion killed in between is written again by the same command.
        report.update_promotion(model_dir, record)
    return record


def _rebased(path: str, recorded_dir: str, model_dir: str) -> str:
    """A path the run recorded (relative to where it ran), under the model_dir given here."""
    if path.startswith(recorded_dir + "/"):
        return model_dir + path[len(recorded_dir):]
    return path


def _absolute(path: str, working_dir) -> str:
    """A local path the run was given relative to its working folder (run_info.json's `working_dir`), made
    absolute; URIs, absolute paths, and paths of runs that did not record the folder are left as they are."""
    if not path or "://" in path or os.path.isabs(path) or not working_dir:
        return path
    return os.path.normpath(os.path.join(working_dir, path))


def _same_place(one: str, other: str):
    """Whether two champion folders are the same (None when that cannot be told: a relative path recorded by a run
    that did not record where it ran)."""
    if "://" in one or "://" in other:
        return one.rstrip("/") == other.rstrip("/")
    if not os.path.isabs(one):
        return None  # Relative to where the run ran.
    return os.path.abspath(one) == os.path.abspath(other)
