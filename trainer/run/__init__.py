"""The state of a run, below the engines: phases and their history, preemption (a public API), distribution
plans, checkpoints and their healing, early stopping's record, the run lock. The stages above (trainer.stages)
and the engines read and write it; it imports neither."""
