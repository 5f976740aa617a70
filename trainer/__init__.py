"""trainer: Keras transfer learning as a distributed, restartable training job.

Entry point: `python -m trainer.task` (console script `trainer`). The work is in
`trainer.run.experiment.train_and_evaluate(config)`, which tests call directly; the
README's "How the code is laid out" maps the folders.
"""

__version__ = "0.1.0"
