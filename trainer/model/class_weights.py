"""--class_weight: per-example loss weights, one per class (used by `models.make_loss`)."""
from typing import Optional

import numpy as np

from trainer.util import files
from trainer.config import Config
from trainer.errors import UsageError


def resolve(config: Config, dataset) -> Optional[list]:
    """--class_weight as one weight per class (None: unweighted)."""
    if config.class_weight == "none":
        return None
    names = dataset.class_names
    if config.class_weight == "balanced":
        if not dataset.train.known_size:
            raise UsageError("--class_weight=balanced needs the training counts, unknown for TFRecords read with "
                             "--labels_file; give a .json file of weights")
        counts = np.bincount(dataset.train.labels, minlength=len(names)).astype(float)
        # A class without training examples (trial c209): weight 1, so its validation examples still count in
        # the evaluation loss (0 dropped them); training never sees it either way.
        return [float(len(dataset.train) / (len(names) * c)) if c else 1.0 for c in counts]
    try:
        given = files.read_json(config.class_weight)
    except ValueError as e:
        raise UsageError(f"--class_weight={config.class_weight} is not valid JSON ({e})") from None
    if given is None:
        raise UsageError(f"--class_weight={config.class_weight} does not exist")
    if not isinstance(given, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and
                                              0 <= v < float("inf") for v in given.values()):
        raise UsageError(f"--class_weight={config.class_weight} must map class names to finite weights >= 0")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"--class_weight={config.class_weight} names classes absent from the data: "
                         f"{', '.join(unknown[:5])} (classes: {', '.join(names[:10])})")
    weights = [float(given.get(name, 1.0)) for name in names]
    if not any(weights):
        raise UsageError(f"--class_weight={config.class_weight} gives every class weight 0: nothing would be "
                         "learned; give at least one class a positive weight")
    return weights
