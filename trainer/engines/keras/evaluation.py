"""One evaluation under the Keras engine: a pass over the evaluation input giving the Estimator engine's
scalars (accuracy, loss, macro_f1, top_k_accuracy or auc) and confusion matrix, written as the same eval/
TensorBoard scalars, with each example's result kept for the report (trainer.outputs.metrics.collected)."""
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from trainer import metric_registry
from trainer.outputs import metrics
from trainer.run import preemption
from trainer.util import faultpoints


def _between_batches(step: int) -> None:
    faultpoints.reached("evaluation_batch")
    preemption.stop_evaluating_if_requested(step)  # A signal during an evaluation inside training (issue 36).


class Evaluator:
    """Evaluates the model as it is now; `evaluate(step)` returns the Estimator-style result dict."""

    def __init__(self, model: tf.keras.Model, eval_input: Callable, steps: Optional[int], label_mode: str,
                 class_names, top_k: int, checkpoint_dir: str):
        self._model, self._input, self._steps = model, eval_input, steps
        self._label_mode, self._class_names, self._top_k = label_mode, list(class_names), top_k
        self._dir = checkpoint_dir
        self._writers = {}
        loss_fn = tf.keras.losses.get(model.loss) if len(model.outputs) == 1 else None

        @tf.function
        def batch(x, y):
            # The compiled loss, computed here: Model.compute_loss would also count into fit's running loss.
            outputs = model(x, training=False)
            (out,) = outputs.values() if isinstance(outputs, dict) else (
                outputs if isinstance(outputs, (list, tuple)) else (outputs,))
            (label,) = y.values() if isinstance(y, dict) else (y,)
            loss = tf.reduce_mean(loss_fn(label, tf.cast(out, tf.float32)))
            if model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
            return out, loss

        self._batch = batch

    def evaluate(self, step: int, name: Optional[str] = None, write: bool = True) -> dict:
        """The evaluation at global step `step`; its scalars go to <checkpoint_dir>/eval (eval_<name>) unless not
        `write` (a step whose evaluation is on record already)."""
        if len(self._model.outputs) != 1:  # Multi-output --model_fn models: Keras's own metrics.
            result = self._model.evaluate(self._input(), steps=self._steps, return_dict=True, verbose=0,
                                          callbacks=[tf.keras.callbacks.LambdaCallback(
                                              on_test_batch_end=lambda *_: _between_batches(step))])
            result = {k: float(v) for k, v in result.items()}
        else:
            result = self._single_output(step)
        result["global_step"] = int(step)
        if write:
            self._write(result, step, name)
        return result

    def _single_output(self, step: int) -> dict:
        probabilities, true_ids, losses, counts = [], [], [], []
        for i, (x, y) in enumerate(self._input()):
            if self._steps is not None and i >= self._steps:
                break
            out, loss = self._batch(x, y)
            _between_batches(step)
            (label,) = y.values() if isinstance(y, dict) else (y,)
            out = np.asarray(tf.cast(out, tf.float32))
            label = np.asarray(label)
            ids = label.argmax(-1) if self._label_mode == "categorical" else label.reshape(-1)
            probabilities.append(out)
            true_ids.append(ids.astype(np.int64))
            losses.append(float(loss) * len(ids))
            counts.append(len(ids))
        if not counts:
            raise ValueError("the evaluation input is empty")
        probabilities, true_ids = np.concatenate(probabilities), np.concatenate(true_ids)
        binary = self._label_mode == "binary"
        found = metrics.from_predictions(probabilities, true_ids, self._class_names, self._top_k, binary=binary)
        loss = sum(losses) / sum(counts)
        result = {name: loss if name == "loss" else (found[name] if found[name] is not None else 0.0)
                  for name in metric_registry.available(len(self._class_names), self._label_mode, self._top_k)}
        result["confusion_matrix"] = np.asarray(found["confusion_matrix"]["matrix"], np.float64)
        scores = probabilities.reshape(-1) if binary and probabilities.shape[-1] == 1 else None
        predicted = (scores > 0.5).astype(np.int64) if scores is not None else probabilities.argmax(-1)
        confidence = np.where(predicted > 0, scores, 1.0 - scores) if scores is not None \
            else probabilities.max(-1)
        metrics.keep_evaluation(self._dir, step, true_ids, predicted, confidence.astype(np.float32))
        return result

    def _write(self, result: dict, step: int, name: Optional[str]) -> None:
        folder = os.path.join(self._dir, "eval" if not name else f"eval_{name}")
        writer = self._writers.get(folder)
        if writer is None:
            writer = self._writers[folder] = tf.summary.create_file_writer(folder)
        with writer.as_default():
            for key, value in result.items():
                if key != "global_step" and np.ndim(value) == 0:
                    tf.summary.scalar(key, float(value), step=int(step))
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
