"""Checkpoint saving listeners: code that runs each time the Estimator saves.

`make_listeners(config)` is the one place that decides which listeners a run gets. The listeners themselves are
engine-neutral (trainer.cloud.checkpoint_sync); here they become the Estimator's CheckpointSaverListeners.
"""
from typing import List

import tensorflow as tf
from absl import logging

from trainer.cloud import checkpoint_sync
from trainer.config import Config
from trainer.cloud.checkpoint_sync import FINAL_WAIT_MAX_SECS, FINAL_WAIT_SECS, SYNC_DEADLINE_SECS  # noqa: F401


class CheckpointLogger(checkpoint_sync.CheckpointLogger, tf.estimator.CheckpointSaverListener):
    pass


class CheckpointSync(checkpoint_sync.CheckpointSync, tf.estimator.CheckpointSaverListener):
    pass


class TensorBoardCopy(checkpoint_sync.TensorBoardCopy, tf.estimator.CheckpointSaverListener):
    pass


def make_listeners(config: Config, plan=None) -> List[tf.estimator.CheckpointSaverListener]:
    """The saving listeners for this run.

    Estimator refuses saving listeners under collective multi-worker strategies, so none
    are attached there (the run logs that it did without them).
    """
    if plan is not None and plan.name == "multi_worker":
        logging.warning("saving listeners are not supported under MultiWorkerMirroredStrategy: "
                        "checkpoints are not logged%s in this run",
                        " and --sync_checkpoints_to is ignored" if config.sync_checkpoints_to else "")
        return []
    result = [CheckpointLogger(config.batch_size)]
    if config.tensorboard_dir:
        result.append(TensorBoardCopy(config.checkpoint_dir or config.model_dir, config.tensorboard_dir))
    if config.sync_checkpoints_to:
        result.append(CheckpointSync(config.checkpoint_dir or config.model_dir, config.sync_checkpoints_to,
                                     background=True))
    return result


