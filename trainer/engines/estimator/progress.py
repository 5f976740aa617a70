"""The progress line (trainer.policy.progress) as a session hook: the loss and learning rate are fetched only for the
steps whose line is shown."""
import tensorflow as tf

from trainer.policy.progress import ProgressLine


class ProgressHook(tf.estimator.SessionRunHook):
    """trainer.policy.progress.ProgressLine after each session step; a `learning_rate` scalar for TensorBoard."""

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
        self._line = ProgressLine(self._max_steps, self._batch_size, self._schedule, self._every_secs)

    def before_run(self, run_context):
        fetches = {"step": self._global_step}
        self._due = self._line.due(self.last_step + 1)
        if self._due:  # Loss and learning rate are fetched only for the steps that are shown.
            fetches.update({k: t for k, t in (("loss", self._loss), ("lr", self._learning_rate)) if t is not None})
        return tf.estimator.SessionRunArgs(fetches)

    def after_run(self, run_context, run_values):
        results = run_values.results
        self.last_step = step = int(results["step"]) + 1
        self._line.step_done(step, loss=results.get("loss"), learning_rate=results.get("lr"), due=self._due)
