"""trainer.run.phases as pure functions: the plan of the flags, and which phases a restart trains (resolve)."""
import dataclasses

import pytest

from trainer.config import Config
from trainer.errors import UsageError
from trainer.run import phases

TWO = Config(train_steps=100, fine_tune_steps=50, learning_rate=0.01)


def test_the_plan_is_the_flags_phases():
    planned = phases.plan(TWO, train_examples=None)
    assert [(p.name, p.first_step, p.last_step) for p in planned] == [("train", 0, 100), ("fine_tune", 100, 150)]
    assert planned[0].learning_rate == 0.01 and planned[1].learning_rate == pytest.approx(0.001)
    assert planned[1].trunk_inference and not planned[0].trunk_inference
    assert phases.plan(TWO, None) == planned  # A pure function: a restart plans the same phases.


def test_epochs_need_the_example_count():
    assert phases.steps_for(2, 100, 32, "epochs") == 7
    with pytest.raises(UsageError, match="--epochs=2 needs the number of training examples"):
        phases.steps_for(2, None, 32, "epochs")


def test_a_fresh_run_trains_every_phase_with_one_boundary():
    planned = phases.plan(TWO, None)
    steps, history = phases.resolve(planned, [], 0, has_checkpoint=False)
    assert [(s.phase.name, s.restart_optimizer) for s in steps] == [("train", False), ("fine_tune", True)]
    assert [h["name"] for h in history] == ["train"]


def test_a_restart_inside_a_phase_goes_on_with_its_optimizer_state():
    planned = phases.plan(TWO, None)
    history = [planned[0].record()]
    steps, _ = phases.resolve(planned, history, 40, has_checkpoint=True)
    assert [(s.phase.name, s.first_step, s.restart_optimizer) for s in steps] == [("train", 0, False),
                                                                                   ("fine_tune", 100, True)]
    # In fine-tuning (its record in place): one step left to train, no boundary.
    steps, _ = phases.resolve(planned, [p.record() for p in planned], 120, has_checkpoint=True)
    assert [(s.phase.name, s.first_step, s.restart_optimizer) for s in steps] == [("fine_tune", 100, False)]


def test_changed_flags_start_a_recorded_phase_at_the_checkpoint():
    planned = phases.plan(TWO, None)
    changed = phases.plan(dataclasses.replace(TWO, learning_rate=0.05), None)
    steps, _ = phases.resolve(changed, [planned[0].record()], 40, has_checkpoint=True)
    assert steps[0].phase.name == "train (flags changed at step 40)" and steps[0].first_step == 40
    assert steps[0].restart_optimizer and steps[0].changes == ("--learning_rate=0.05 (was 0.01)",)


def test_a_checkpoint_without_history_assumes_the_plan():
    planned = phases.plan(TWO, None)
    steps, history = phases.resolve(planned, [], 120, has_checkpoint=True)
    assert [h["name"] for h in history] == ["train", "fine_tune"]
    assert [(s.phase.name, s.restart_optimizer) for s in steps] == [("fine_tune", False)]


def test_a_garbled_history_counts_as_none():
    assert phases.history_of({"phases": [{"name": "train", "first_step": "0", "last_step": 10}]}) == []
    assert phases.history_of({"dry_run": True, "phases": [{"name": "train", "first_step": 0, "last_step": 1}]}) == []


def test_nothing_left_when_the_checkpoint_is_at_the_end():
    planned = phases.plan(TWO, None)
    steps, _ = phases.resolve(planned, [p.record() for p in planned], 150, has_checkpoint=True)
    assert steps == []
