"""The progress line of training, for both engines: `step N/M (p%), x steps/s, y examples/s, lr L, loss X, ETA
h:mm:ss`, a bar on a terminal, else a line every `every_secs` (trainer.util.console.Progress). The engine says when a
step ends (`step_done`) with what it has: the loss when the line is due (`due`: fetch it only then) and the learning
rate when no schedule computes it."""
import time
from typing import Optional

from trainer.util import console


class ProgressLine:
    def __init__(self, max_steps: int, batch_size: int, schedule=None, every_secs: float = 10.0):
        self._max, self._batch, self._schedule, self._every = max_steps, batch_size, schedule, every_secs
        self._progress = console.Progress(every_secs)
        self._last = None  # (step, time) the rate is measured from.

    def due(self, step: int) -> bool:
        """Whether the line of `step` will be shown (the final step's always is)."""
        return self._progress.due(step >= self._max)

    def step_done(self, step: int, loss: Optional[float] = None, learning_rate: Optional[float] = None,
                  due: Optional[bool] = None) -> None:
        """After global step `step`; `due`: what `due(step)` said before it ran (else asked now)."""
        now = time.time()
        if self._last is None:
            self._last = (step, now)  # The first step includes tracing and warm-up: not timed.
            return
        final = step >= self._max
        if not (final or (self.due(step) if due is None else due)):
            return
        last_step, last_time = self._last
        rate = (step - last_step) / max(now - last_time, 1e-9)
        eta = (self._max - step) / rate if rate > 0 else 0.0
        parts = [f"step {step}/{self._max} ({100.0 * step / self._max:.0f}%)", f"{rate:.1f} steps/s",
                 f"{rate * self._batch:.0f} examples/s"]
        if self._schedule is not None:
            parts.append(f"lr {self._schedule.value(step - 1):.3g}")
        elif learning_rate is not None:
            parts.append(f"lr {float(learning_rate):.3g}")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self._progress.show(step, self._max, ", ".join(parts), final=final)
        if now - last_time >= self._every / 2:  # A bar, redrawn often, shows the rate over seconds.
            self._last = (step, now)
