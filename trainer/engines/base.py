"""The seam between a run's stages and what trains the model (as Keras 3's `trainers/trainer.py` is to its
backends): the loop only. The stages (trainer.stages.prepare -> experiment -> finish) call these methods and nothing
else of an engine; an engine never calls a stage back. What happens after each evaluation, around each checkpoint
and on a signal is engine-neutral policy (trainer.policy, trainer.run.preemption, trainer.cloud.checkpoint_sync)
that each engine adapts in a few lines.

    prepare   describe(), scope(), input_batch_size(per_replica), prepare_inputs(run) -> Inputs
    phases    start_phase(run, step, schedule) -> caught up?    train_phase(run, step, schedule) -> evaluation
              end_training()                                     (once, however the phases end)
    finish    final_evaluation(run, eval_metrics), export(run, checkpoint), predictions(run, checkpoint)

Adding an engine: subclass `Engine` in trainer/engines/<name>/engine.py, add it to `trainer.engines.ENGINES`
and to the `--engine` choices (trainer.config.ENGINES); tests/test_engine_contract.py runs the contract on it.
"""
import abc
from typing import Callable, FrozenSet, NamedTuple, Optional

from trainer.config import Config
from trainer.run import distribution


class Inputs(NamedTuple):
    """What `prepare_inputs` gives the stages: the input_fns, and with --cache_features the feature cache (whose
    `head` is the model the phases then train)."""
    train: Callable
    eval: Callable
    cache: object = None


class Engine(abc.ABC):
    name: str = ""
    # Whether the run's distribution plan is made for eager tf.distribute (Model.fit) rather than graph mode.
    eager: bool = False
    # The distribution plans under which the training input resumes its stream after a restart, so that a resumed
    # run sees the batches the uninterrupted one saw (trainer.stages.prepare).
    resumes_input_under: FrozenSet[str] = frozenset()
    # The distribution plans under which a restart must keep the recipe flags (it cannot begin a new phase).
    recipe_fixed_under: FrozenSet[str] = frozenset()
    # Where the engine's tasks do not start together: the file (relative to --checkpoint_dir) the chief writes
    # before a non-chief task may read the phase history (trainer.run.checkpoints.wait_for_chief); None: they do.
    chief_writes_first: Optional[str] = None
    # The plans under which the chief finishes (final evaluation, export) on a model built anew outside the
    # cluster's strategy, whose other tasks are gone (its variables would wait for them); the engine restores it.
    finishes_apart_under: FrozenSet[str] = frozenset()
    # Whether the tf.data autotuner may run in its input pipelines (trainer.data.inputs.pipeline_options: not where
    # the loop closes its iterators often, as the Estimator's Session per evaluation).
    autotunes_input: bool = False
    # Training steps per call into the device (Model.fit's steps_per_execution; the stages compile with it).
    steps_per_execution: int = 1

    def __init__(self, config: Config, plan: distribution.Plan):
        self.config, self.plan = config, plan

    # ---- prepare ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> str:
        """What trains, for run_info.json's `estimator` and the console header."""

    @abc.abstractmethod
    def scope(self, finishing: bool = False):
        """A context manager: where the stages build and compile the Keras model. `finishing`: for the chief's last
        steps, when the other tasks of a cluster are gone."""

    @abc.abstractmethod
    def input_batch_size(self, per_replica: int) -> int:
        """The batch the training input yields, from the per-replica batch."""

    @abc.abstractmethod
    def prepare_inputs(self, run) -> Inputs:
        """The training and evaluation input_fns (with --cache_features, the cache's); refuses (UsageError) what
        this engine cannot train under the run's plan, before any expensive work. Reads `run`, writes nothing
        into it."""

    # ---- phases -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def start_phase(self, run, step, schedule) -> bool:
        """Builds for the phase and enters it (trainer.run.phases.start: a boundary restarts the optimizer state);
        True when it evaluated a checkpoint an interruption had left unevaluated (early stopping may have decided)."""

    @abc.abstractmethod
    def train_phase(self, run, step, schedule) -> Optional[dict]:
        """Trains to the phase's last step, evaluating on the schedule; the last evaluation (None if none ran
        here)."""

    @abc.abstractmethod
    def end_training(self) -> None:
        """Once per run after the phases this process trains, however they ended: what the loop must close."""

    # ---- finish -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def final_evaluation(self, run, eval_metrics: Optional[dict]) -> dict:
        """The run's last evaluation: `eval_metrics` when the phases gave one, else one made here."""

    @abc.abstractmethod
    def export(self, run, checkpoint: str, root: Optional[str] = None) -> str:
        """A SavedModel of `checkpoint` in a new version folder of `root` (default: export/<--export> of the
        checkpoint folder: when no evaluation exported one; the calibrated weights go to export/calibrated); its
        path."""

    @abc.abstractmethod
    def predictions(self, run, checkpoint: str):
        """A cached run's predictions on the cached validation features (trainer.outputs.predictions.Predictions),
        or None where the report predicts with the served model."""


