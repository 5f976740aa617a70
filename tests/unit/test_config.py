"""trainer.config as pure functions: validation once per run, and a run's record back to its Config."""
import dataclasses
import json

import pytest

from trainer.config import Config, parse_augment, validate
from trainer.errors import UsageError


def test_a_record_becomes_the_same_config():
    config = Config(data="digits", classes=("a", "b"), head_units=(64,), augment=parse_augment("flip,zoom:0.2"),
                    train_steps=7)
    record = json.loads(json.dumps(config.to_dict()))  # As run_info.json holds it: tuples become lists.
    assert Config.from_dict(record) == config
    assert Config.from_dict({"train_steps": 3, "a_flag_of_a_later_version": 1}) == Config(train_steps=3)


def test_validation_runs_once_and_again_after_a_change(tmp_path):
    config = validate(Config(data="digits", model_dir=str(tmp_path / "runs"), unique_run_dir=True))
    assert validate(config) is config  # The library entry point does not validate (nor add a run id) again.
    changed = dataclasses.replace(config, batch_size=0)
    with pytest.raises(UsageError, match="--batch_size"):
        validate(changed)


def test_metric_flags_read_the_registry():
    with pytest.raises(UsageError, match="choose one of: accuracy, loss, macro_f1, top_k_accuracy"):
        validate(Config(data="digits", promote_metric="bogus"))
