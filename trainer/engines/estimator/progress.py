"""A training hook that shows progress a person can watch: step, speed, learning rate, loss, ETA."""
import time

import tensorflow as tf

from trainer.util import console


class ProgressHook(tf.estimator.SessionRunHook):
    """`step N/M (p%), x steps/s, y examples/s, lr L, loss X, ETA h:mm:ss`: a bar on a terminal, else a
    line every `every_secs`."""

    def __init__(self, max_steps: int, batch_size: int, every_secs: float = 10.0, summarize: bool = True,
                 learning_rate=None):
        self._schedule = learning_rate  # A schedules.PhaseSchedule: the rate is computed, not fetched.
        self._max_steps = max_steps
        self._batch_size = batch_size
        self._every_secs = every_secs
        self._summarize = summarize  # Add a `learning_rate` scalar for TensorBoard (not on TPUs: host-only).

    last_step = 0  # The last global step seen, for error messages.

    def begin(self):
        self._global_step = tf.compat.v1.train.get_or_create_global_step()
        losses = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.LOSSES)  # Estimator adds its loss there.
        self._loss = losses[-1] if losses else None
        # The Keras legacy optimizer keeps its learning rate in a variable (training/Adam/learning_rate).
        rates = [v for v in tf.compat.v1.global_variables()
                 if v.name.split(":")[0].rsplit("/", 1)[-1] in ("learning_rate", "lr") and v.shape.rank == 0]
        self._learning_rate = rates[0] if rates and self._schedule is None else None
        if self._learning_rate is not None and self._summarize:
            # Hooks begin before the Scaffold merges the graph's summaries: the Estimator's summary hook
            # writes this one with the loss, every save_summary_steps.
            tf.compat.v1.summary.scalar("learning_rate", self._learning_rate)
        self._last = None  # (step, time) of the last line.
        self._progress = console.Progress(self._every_secs)

    def before_run(self, run_context):
        fetches = {"step": self._global_step}
        self._due = self._progress.due(self.last_step + 1 >= self._max_steps)
        if self._due:  # Loss and learning rate are fetched only for the steps that are shown.
            fetches.update({k: t for k, t in (("loss", self._loss), ("lr", self._learning_rate)) if t is not None})
        return tf.estimator.SessionRunArgs(fetches)

    def after_run(self, run_context, run_values):
        results = run_values.results
        step, now = int(results["step"]) + 1, time.time()
        self.last_step = step
        if self._last is None:
            self._last = (step, now)  # The first step includes graph warm-up: not timed.
            return
        final = step >= self._max_steps
        if not (self._due or final):
            return
        last_step, last_time = self._last
        rate = (step - last_step) / max(now - last_time, 1e-9)
        eta = (self._max_steps - step) / rate if rate > 0 else 0.0
        parts = [f"step {step}/{self._max_steps} ({100.0 * step / self._max_steps:.0f}%)",
                 f"{rate:.1f} steps/s", f"{rate * self._batch_size:.0f} examples/s"]
        if self._schedule is not None:
            parts.append(f"lr {self._schedule.value(step - 1):.3g}")
        elif "lr" in results:
            parts.append(f"lr {float(results['lr']):.3g}")
        if "loss" in results:
            parts.append(f"loss {float(results['loss']):.4f}")
        parts.append(f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self._progress.show(step, self._max_steps, ", ".join(parts), final=final)
        if now - last_time >= self._every_secs / 2:  # A bar, redrawn often, shows the rate over seconds.
            self._last = (step, now)
