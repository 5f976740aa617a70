"""Named instants where a test can stop this process, to prove a restart from there ends as a run never stopped.

A signal sent from outside lands at a random instant, so the few instants that matter most (between the
writes of a phase boundary) are hit only by luck. `TRAINER_FAULTPOINT=name` (or `name:term`, several
comma-separated) makes `reached(name)` send this process SIGKILL (or SIGTERM, which the preemption handler
turns into a checkpoint and exit 143). Unset, as in every real run, `reached` does nothing.
"""
import os
import signal


def reached(name: str) -> None:
    wanted = os.environ.get("TRAINER_FAULTPOINT")
    if not wanted:
        return
    for item in wanted.split(","):
        point, _, how = item.strip().partition(":")
        if point == name:
            os.kill(os.getpid(), signal.SIGTERM if how == "term" else signal.SIGKILL)


def delay(name: str) -> None:
    """`TRAINER_FAULT_DELAY=name:seconds` makes this instant slow (a test's slow evaluator); unset, nothing."""
    wanted = os.environ.get("TRAINER_FAULT_DELAY")
    if not wanted:
        return
    for item in wanted.split(","):
        point, _, seconds = item.strip().partition(":")
        if point == name:
            import time

            time.sleep(float(seconds or 0))
