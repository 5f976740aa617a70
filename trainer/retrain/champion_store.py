"""Champion/challenger: promote a retrained model only when it beats the current one.

Layout under --champion_dir (a local folder or gs://BUCKET/prefix):

    CHAMPION.json             names the current version, with its metrics, time and source run
    <version>/model/          the serving SavedModel
    <version>/keras_model.h5  the Keras model (a --warm_start_from / --base_model)
    <version>/metrics.json    the metrics it was promoted with

A version folder is complete before CHAMPION.json names it, and CHAMPION.json is
replaced atomically: locally by a rename under a file lock, on Cloud Storage by a
write with a generation precondition. When two runs race, one wins and the other
is told it lost; a reader that follows CHAMPION.json never sees a partial model.

    python -m trainer.champion show|history|rollback --champion_dir=DIR [--to=VERSION]

The stores (local folder, Cloud Storage) are in trainer.retrain.stores; this module decides, promotes and
rolls back through them.
"""
import time
from typing import List, Optional, Tuple

from trainer.errors import UsageError
from trainer import metric_registry
from trainer.retrain.stores import (LEFTOVER_AGE_SECS, POINTER, GcsStore, LocalStore, Unreachable,  # noqa: F401
                                    network_failure, new_version, open_store, parse_pointer)


def lower_is_better(metric: str) -> bool:
    return metric_registry.lower_is_better(metric)


def beats(challenger: float, champion: float, metric: str, min_delta: float) -> bool:
    return metric_registry.improves(challenger, champion, metric, min_delta)


def current_keras_model(champion_dir: str) -> Optional[str]:
    """Local path of the champion's keras_model.h5, or None when there is no champion yet."""
    store = open_store(champion_dir)
    pointer = read_current(store, champion_dir)
    return store.keras_model(pointer["version"]) if pointer else None


def read_current(store, champion_dir: str, token: bool = False):
    """The pointer (None: no champion yet), checked to name a complete version; with token: (pointer, token).

    Raises:
        UsageError: CHAMPION.json is unreadable or names a missing or incomplete version.
    """
    pointer, generation = store.read_pointer()
    if pointer is not None and not store.is_complete(pointer["version"]):
        raise UsageError(f"{champion_dir.rstrip('/')}/{POINTER} names version {pointer['version']}, which is "
                         f"missing or incomplete (no metrics.json); repair it with `python -m trainer.champion "
                         f"rollback --champion_dir={champion_dir} --to=VERSION` (`history` lists the versions)")
    return (pointer, generation) if token else pointer


def decide(metric: str, challenger: float, champion: Optional[float], min_delta: float) -> Tuple[bool, str]:
    if champion is None:
        return True, "no champion yet"
    if beats(challenger, champion, metric, min_delta):
        return True, f"challenger {metric} {challenger:.6f} beats champion {champion:.6f} by more than {min_delta}"
    return False, f"challenger {metric} {challenger:.6f} does not beat champion {champion:.6f} by more than {min_delta}"


def promote(store, token, version: str, saved_model_dir: str, keras_h5: str, metrics: dict, source: str,
            previous: Optional[str], chain: Optional[List[str]] = None, report: Optional[dict] = None) -> bool:
    """Copies the challenger into its version folder, then swaps CHAMPION.json. False if the race was lost:
    then the copy is removed again, and `report` (if given) gets `removed` (bool) and `error` (why not).

    `chain`: the versions that were champion before, oldest first (default: `previous` alone).

    Raises:
        UsageError: Cloud Storage became unreachable (the message says what was left where)."""
    store.put_version(version, saved_model_dir, keras_h5, metrics)
    pointer = {"version": version, "metrics": metrics, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "source_run": source, "previous": previous,
               "chain": list(chain) if chain is not None else ([previous] if previous else [])}
    try:
        won = store.write_pointer(pointer, token)
    except Exception as e:
        detail = network_failure(e)
        if detail is None:
            raise
        where = getattr(store, "uri", getattr(store, "root", ""))
        raise Unreachable(f"--champion_dir={where}: Cloud Storage became unreachable while replacing "
                          f"{POINTER} ({detail}); version {version} was copied, but whether {POINTER} names it is "
                          f"unknown: check with `python -m trainer.champion show --champion_dir={where}`") from None
    if won:
        return True
    # Lost the race: the copy must not stay behind looking like a version (`history` would list it, `rollback
    # --to` accept it). Unless CHAMPION.json names it after all (a rollback --to it in between).
    outcome = {"removed": False, "error": None}
    try:
        current, _ = store.read_pointer(strict=False)
        if current is not None and current.get("version") == version:
            outcome["error"] = f"{POINTER} names it"
        else:
            store.remove_version(version)
            outcome["removed"] = True
    except Exception as e:  # noqa: BLE001 - best effort; said on the console by the caller.
        outcome["error"] = f"{type(e).__name__}: {str(e).strip()[:160]}"
    if report is not None:
        report.update(outcome)
    return False


def rollback(champion_dir: str, to: Optional[str] = None) -> dict:
    """Points CHAMPION.json back at `to` (default: the version before the current one)."""
    store = open_store(champion_dir)
    # An unreadable CHAMPION.json must not stop the one command that repairs it (with --to).
    pointer, token = store.read_pointer(strict=to is None)
    if pointer is None and token in (None, 0):
        raise UsageError(f"--champion_dir={champion_dir} has no champion to roll back")
    chain = lineage(pointer) if pointer else []
    target = to or (chain[-1] if chain else None)
    if not target:
        raise UsageError(f"the current champion {pointer['version']} has no earlier champion; name a version "
                         "with --to")
    if not store.is_complete(target):
        raise UsageError(f"--to={target} is not a complete version; versions: "
                         f"{', '.join(store.versions()) or 'none'}")
    current = pointer["version"] if pointer else None
    new = {"version": target, "metrics": store.metrics(target), "time": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_run": f"rollback from {current}" if current else f"rollback (repaired an unreadable {POINTER})",
        "rolled_back_from": current}
    # Each rollback without --to goes one champion further back, never forward to the one it left.
    new["chain"] = chain[:chain.index(target)] if target in chain else chain + ([current] if current else [])
    new["previous"] = new["chain"][-1] if new["chain"] else None
    if not store.write_pointer(new, token):
        raise UsageError("CHAMPION.json changed while rolling back (another promotion?); try again")
    return new


def lineage(pointer: dict) -> List[str]:
    """The versions that were champion before this pointer's, oldest first (older pointers: `previous` only)."""
    chain = pointer.get("chain")
    if isinstance(chain, list):
        return [str(v) for v in chain]
    return [pointer["previous"]] if pointer.get("previous") else []
