"""trainer.policy.after_evaluation: what both engines do after each evaluation, run with stand-in exports."""
import json
import os

import numpy as np
import pytest

from trainer.config import Config
from trainer.outputs import evaluations
from trainer.policy.after_evaluation import AfterEvaluation
from trainer.run import early_stopping


class Exports:
    """A stand-in for an engine's SavedModel writer: a version folder per call, as serving.export makes."""

    def __init__(self):
        self.calls = []

    def __call__(self, root, keep):
        path = os.path.join(root, str(1000 + len(self.calls)))
        os.makedirs(os.path.join(path, "variables"))
        open(os.path.join(path, "saved_model.pb"), "w").close()
        self.calls.append((root, keep))
        return path


def result(step, accuracy, loss=1.0):
    return {"global_step": step, "accuracy": accuracy, "loss": loss,
            "confusion_matrix": np.array([[2.0, 1.0], [0.0, 3.0]])}


def policy(tmp_path, **flags):
    config = Config(model_dir=str(tmp_path), checkpoint_dir=str(tmp_path), **flags)
    return AfterEvaluation(config, ["a", "b"])


@pytest.mark.parametrize("kind", ["best", "latest", "final"])
def test_which_evaluations_export(tmp_path, kind):
    after, exports = policy(tmp_path, export=kind, keep_checkpoint_max=3), Exports()
    got = [after(result(s, a), s == 30, exports, lambda: True) is not None
           for s, a in ((10, 0.5), (20, 0.4), (30, 0.6))]
    assert got == {"best": [True, False, True], "latest": [True, True, True], "final": [False, False, True]}[kind]
    assert {keep for _, keep in exports.calls} == ({None} if kind == "final" else {3})
    assert evaluations.processed_step(str(tmp_path)) == 30  # Marked after every action saw it.


def test_the_best_record_survives_a_new_policy_object(tmp_path):
    """A restart is a new process: the record on disk, not memory, decides (tensorflow#47396)."""
    exports = Exports()
    policy(tmp_path)(result(10, 0.9), False, exports, lambda: True)
    assert policy(tmp_path)(result(20, 0.5), False, exports, lambda: True) is None
    record = json.loads((tmp_path / "export" / "best" / "best.json").read_text())
    assert record["metrics"]["global_step"] == 10 and record["export"] == "1000"
    assert record["confusion_matrix"] == [[2, 1], [0, 3]]


def test_non_finite_weights_and_early_stopping(tmp_path):
    after, exports = policy(tmp_path, early_stopping_patience=1, early_stopping_metric="loss"), Exports()
    assert after(result(10, 0.5, loss=0.5), False, exports, lambda: False) is None and not exports.calls
    after(result(20, 0.5, loss=0.7), False, exports, lambda: True)
    assert early_stopping.stopped_at(str(tmp_path)) == 20
    # Step 10 was counted by early stopping but not exported (its weights): step 20 is the first best export, on
    # early stopping's metric.
    assert json.loads((tmp_path / "export" / "best" / "best.json").read_text())["metric"] == "loss"


def test_catch_up_evaluates_only_what_the_uninterrupted_run_evaluated():
    from trainer.policy import catch_up

    assert catch_up.due(40, processed=20, first_step=0, every=20)  # Saved on the schedule, not evaluated.
    assert not catch_up.due(40, processed=40, first_step=0, every=20)  # Evaluated already.
    assert not catch_up.due(37, processed=20, first_step=0, every=20)  # A preemption checkpoint: off schedule.
    assert catch_up.due(37, processed=20, first_step=0, every=20, final=True)  # ...unless it is the run's last.
    assert catch_up.due(45, processed=None, first_step=25, every=20)  # A phase's schedule counts from its start.
    assert not catch_up.due(0, processed=None, first_step=0, every=20)
