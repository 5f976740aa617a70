"""trainer: Keras transfer learning trained through tf.estimator.

Entry point: `python -m trainer.task` (console script `trainer`). The work is in
`trainer.experiment.train_and_evaluate(config)`, which tests call directly.
"""

__version__ = "0.1.0"
