"""Engine-neutral policy: what a run does around its training loop, written once and adapted by each engine in a
few lines (as Keras 3's callbacks and TF Model Garden's post-evaluation actions are): after_evaluation (the
export decision, early stopping's count, markers, the console line, images, hyperparameter tuning). The loop
policy for signals is trainer.run.preemption's (training_begins / preempt_after_step / training_ends)."""
