"""Named instants where a test can stop this process, to prove a restart from there ends as a run never stopped.

A signal sent from outside lands at a random instant, so the few instants that matter most (between the
writes of a phase boundary) are hit only by luck. `TRAINER_FAULTPOINT=name` (or `name:term`, several
comma-separated) makes `reached(name)` send this process SIGKILL (or SIGTERM, which the preemption handler
turns into a checkpoint and exit 143). Unset, as in every real run, `reached` does nothing.
"""
import os
import signal


def _setting(variable: str, name: str):
    """The value after `name:` in $variable (a comma list of name[:value]); None when `name` is not listed."""
    for item in (os.environ.get(variable) or "").split(","):
        point, _, value = item.strip().partition(":")
        if point == name:
            return value
    return None


def reached(name: str) -> None:
    how = _setting("TRAINER_FAULTPOINT", name)
    if how is not None:
        os.kill(os.getpid(), signal.SIGTERM if how == "term" else signal.SIGKILL)


def delay(name: str) -> None:
    """`TRAINER_FAULT_DELAY=name:seconds` makes this instant slow (a test's slow evaluator); unset, nothing."""
    seconds = _setting("TRAINER_FAULT_DELAY", name)
    if seconds is not None:
        import time

        time.sleep(float(seconds or 0))


_failed = {}  # Times each instant has failed in this process (for `failing`).


def failing(name: str) -> bool:
    """`TRAINER_FAULT_FAIL=name:N` makes the first N times this instant is reached fail (True: the caller raises; a
    test's model fault); unset, False."""
    times = _setting("TRAINER_FAULT_FAIL", name)
    if times is None or _failed.get(name, 0) >= int(times or 1):
        return False
    _failed[name] = _failed.get(name, 0) + 1
    return True
