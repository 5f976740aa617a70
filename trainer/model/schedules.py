"""Learning-rate schedules: a function of the global step, one per training phase.

The schedule is a Keras `LearningRateSchedule`, so the legacy optimizer that
the Estimator engine's Keras conversion clones evaluates it at `optimizer.iterations`, which the
Estimator sets to the global step. Nothing of it is a checkpointed variable:
after a resume the rate is the schedule's value at the restored step (a changed
--learning_rate is never silently overridden by the checkpoint), and it is the
same under every strategy and on TPUs.

Within a phase `[first_step, last_step)`: linear warmup from 0 over
`warmup_steps`, then `constant`, `cosine` (to `min_learning_rate` at the last
step), `exponential` (times `decay_rate` every `decay_steps`, smoothly) or `step`
(the same, as a staircase).
"""
import math

import tensorflow as tf

SCHEDULES = ("constant", "cosine", "exponential", "step")


@tf.keras.utils.register_keras_serializable(package="trainer")
class PhaseSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of one phase, from the global step."""

    def __init__(self, learning_rate: float, first_step: int = 0, last_step: int = 1, kind: str = "constant",
                 warmup_steps: int = 0, min_learning_rate: float = 0.0, decay_rate: float = 0.1,
                 decay_steps: int = 1000):
        self.learning_rate = float(learning_rate)
        self.first_step = int(first_step)
        self.last_step = int(last_step)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.min_learning_rate = float(min_learning_rate)
        self.decay_rate = float(decay_rate)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) - float(self.first_step)  # Steps done in this phase.
        base = tf.constant(self.learning_rate, tf.float32)
        after_warmup = tf.maximum(step - float(self.warmup_steps), 0.0)
        if self.kind == "cosine":
            span = float(max(self.last_step - self.first_step - self.warmup_steps, 1))
            progress = tf.minimum(after_warmup / span, 1.0)
            rate = self.min_learning_rate + (base - self.min_learning_rate) * 0.5 * (
                1.0 + tf.cos(math.pi * progress))
        elif self.kind in ("exponential", "step"):
            exponent = after_warmup / float(self.decay_steps)
            if self.kind == "step":
                exponent = tf.floor(exponent)
            rate = base * tf.pow(self.decay_rate, exponent)
        else:
            rate = base
        if self.warmup_steps:
            # Step k (0-based) of the phase trains at (k + 1) / warmup of the rate: never exactly 0.
            warm = tf.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
            rate = rate * warm
        return rate

    def value(self, step: int) -> float:
        """The rate at a global step, in plain Python (progress lines, tests): the same formula."""
        done = float(step - self.first_step)
        after_warmup = max(done - self.warmup_steps, 0.0)
        rate = self.learning_rate
        if self.kind == "cosine":
            span = float(max(self.last_step - self.first_step - self.warmup_steps, 1))
            progress = min(after_warmup / span, 1.0)
            rate = self.min_learning_rate + (rate - self.min_learning_rate) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind in ("exponential", "step"):
            exponent = after_warmup / self.decay_steps
            rate = rate * self.decay_rate ** (math.floor(exponent) if self.kind == "step" else exponent)
        if self.warmup_steps:
            rate *= min((done + 1.0) / self.warmup_steps, 1.0)
        return rate

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "first_step": self.first_step, "last_step": self.last_step,
                "kind": self.kind, "warmup_steps": self.warmup_steps, "min_learning_rate": self.min_learning_rate,
                "decay_rate": self.decay_rate, "decay_steps": self.decay_steps}


