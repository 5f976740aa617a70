"""The final evaluation under --tta: the served model (keras_model.h5, images in, calibrated when it was) over the
validation split, plain and averaged over the views of trainer/data/tta.py, from one pass, so that the two figures
eval_metrics.json puts side by side (`tta`) differ by the views alone."""
import numpy as np

from trainer.data import tta
from trainer.model.keras_files import load_keras
from trainer.outputs import calibration
from trainer.outputs.predictions import class_ids_of


def evaluate(keras_h5: str, input_fn, label_mode: str, kind: str) -> dict:
    """{"views", "n", "plain": {"accuracy", "nll"}, "accuracy", "nll"} (NLL: the mean negative log probability of
    the true class, without the training loss's smoothing or regularisation)."""
    model = load_keras(keras_h5)
    plain, averaged, ids = [], [], []
    for features, labels in input_fn():
        (images,) = features.values()
        outputs = [model(view, training=False).numpy() for view in tta.views(images, kind)]
        plain.append(outputs[0])
        averaged.append(np.mean(outputs, axis=0))
        ids.append(class_ids_of(labels, label_mode))
    y = np.concatenate(ids)

    def figures(probabilities):
        p = calibration.as_classes(np.concatenate(probabilities))
        return {"accuracy": float((p.argmax(axis=1) == y).mean()), "nll": calibration.nll(p, y)}

    return {"views": kind, "n_views": tta.count(kind), "n": int(len(y)), "plain": figures(plain), **figures(averaged)}
