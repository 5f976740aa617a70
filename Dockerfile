# Training images for Vertex AI custom jobs, one per engine (pick with --target; scripts/submit_vertex.py --engine):
#   docker build --target keras -t IMAGE .                           # Keras engine, TensorFlow 2.21, CPU (the default)
#   docker build --target keras --build-arg DEVICE=gpu -t IMAGE .    # Keras engine, TensorFlow 2.21, CUDA
#   docker build --target estimator -t IMAGE .                       # Estimator engine, TensorFlow 2.15, CPU
#   docker build --target estimator --build-arg DEVICE=gpu -t IMAGE .
# The serving image (Vertex AI custom prediction container, `python -m trainer.serve`) for either engine's exports:
#   docker build --target serve -t SERVING_IMAGE .                    # TensorFlow 2.21, CPU
# keras: Python 3.12 with TensorFlow 2.21 + tf-keras 2.21 (trainer[keras-cpu] or [keras-gpu]), a TensorFlow that still
# gets security fixes. estimator: TensorFlow 2.15's own image (the last with tf.estimator; TPUEstimator, the feature
# cache), the package installed without replacing its TensorFlow. Same flags, same files. cloudbuild.yaml builds one
# of them (_ENGINE, _DEVICE).
ARG DEVICE=cpu

FROM tensorflow/tensorflow:2.15.0 AS tf215-cpu
FROM tensorflow/tensorflow:2.15.0-gpu AS tf215-gpu

FROM tf215-${DEVICE} AS estimator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
# What TensorFlow 2.15 needs besides itself (setup.py's TF215), without reinstalling the base image's TensorFlow.
RUN pip install --no-cache-dir . "tensorflow-estimator==2.15.*" "numpy<2" "protobuf<5" && python -c "import trainer.task"
ENTRYPOINT ["python", "-m", "trainer.task", "--engine=estimator"]

# Serving: Vertex AI's custom-container contract (AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE, AIP_STORAGE_URI)
# through its CPR model server, on TensorFlow 2.21; it serves both engines' exports. scripts/register_model.py
# --serving_image names this image's URI with the routes below.
FROM python:3.12-slim AS serve
ARG DEVICE
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 TF_USE_LEGACY_KERAS=1 \
    AIP_HTTP_PORT=8080 AIP_HEALTH_ROUTE=/health AIP_PREDICT_ROUTE=/predict TRAINER_CACHE_DIR=/tmp/trainer-cache
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
RUN pip install --no-cache-dir ".[keras-${DEVICE},serve]" && python -c "import trainer.serve.server"
EXPOSE 8080
ENTRYPOINT ["python", "-m", "trainer.serve", "--host=0.0.0.0"]

# Last, so that a build without --target makes the image of the supported runtime.
FROM python:3.12-slim AS keras
ARG DEVICE
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1 TF_USE_LEGACY_KERAS=1
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
# kfp too: the retraining pipeline's steps run in this image (python -m trainer.pipeline --image=...).
RUN pip install --no-cache-dir ".[keras-${DEVICE},pipeline]" && python -c "import trainer.task, kfp"
ENTRYPOINT ["python", "-m", "trainer.task", "--engine=keras"]
