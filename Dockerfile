# Custom training images for Vertex AI (the prebuilt TF 2.15 images are past their end of availability).
#   docker build -t IMAGE .                                                          # Estimator engine, CPU (default)
#   docker build --build-arg BASE_IMAGE=tensorflow/tensorflow:2.15.0-gpu -t IMAGE .   # Estimator engine, GPU
#   docker build --target keras -t IMAGE .                                           # Keras engine, TF 2.21, CPU
#   docker build --target keras --build-arg KERAS_EXTRA=keras-gpu -t IMAGE .         # Keras engine, TF 2.21, GPU
# The default image's base provides TensorFlow 2.15; the package installs without replacing it. The keras
# target is Python 3.12 with TensorFlow 2.21 + tf-keras 2.21 (trainer[keras-cpu] or [keras-gpu]): the same
# flags and files, on a TensorFlow that still gets security fixes (scripts/submit_vertex.py --engine=keras).
ARG BASE_IMAGE=tensorflow/tensorflow:2.15.0

FROM python:3.12-slim AS keras
ARG KERAS_EXTRA=keras-cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1 TF_USE_LEGACY_KERAS=1
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
RUN pip install --no-cache-dir ".[${KERAS_EXTRA}]" && python -c "import trainer.task"
ENTRYPOINT ["python", "-m", "trainer.task", "--engine=keras"]

FROM ${BASE_IMAGE} AS estimator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
# What TensorFlow 2.15 needs besides itself (setup.py's TF215), without reinstalling the base image's TensorFlow.
RUN pip install --no-cache-dir . "tensorflow-estimator==2.15.*" "numpy<2" "protobuf<5" && python -c "import trainer.task"

ENTRYPOINT ["python", "-m", "trainer.task"]
