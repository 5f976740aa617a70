"""trainer: Keras transfer learning as a distributed, restartable training job.

Entry point: `python -m trainer.task` (console script `trainer`). The work is in
`trainer.stages.experiment.train_and_evaluate(config)`, which tests call directly; the
README's "How the code is laid out" maps the folders.
"""

__version__ = "0.1.0"

import importlib.util as _importlib_util
import os as _os
import sys as _sys

# On TensorFlow 2.16+ `tf.keras` is Keras 3 unless this is set before TensorFlow is imported; trainer's
# models, .h5 files and both engines are the Keras 2 API (tf-keras, installed by the keras-cpu/keras-gpu
# extras). TensorFlow 2.15 bundles Keras 2 and has no tf-keras: nothing is set there.
if "tensorflow" not in _sys.modules and _importlib_util.find_spec("tf_keras") is not None:
    _os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
