"""Catch-up after a restart, for both engines: whether the latest checkpoint is one the uninterrupted run evaluated
and no evaluation has processed yet (the interruption came between its save and the end of what follows its
evaluation). Then the engine evaluates it first, as if never interrupted, and says so on the console."""
from typing import Optional

from trainer.util import console


def due(step: int, processed: Optional[int], first_step: int, every: int, final: bool = False) -> bool:
    """True for a checkpoint at `step` (> 0) past the last processed evaluation that lies on the phase's schedule
    first_step + k x every (a preemption checkpoint elsewhere is not evaluated), or is the run's last (`final`)."""
    if step <= 0 or (processed is not None and processed >= step):
        return False
    return final or not (step - first_step) % every


def announce(step: int) -> None:
    console.say("catching up: step %d was saved before the interruption and not evaluated yet", step)
