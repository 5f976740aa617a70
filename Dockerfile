# Custom training image for Vertex AI (the prebuilt TF 2.15 images are past their end of availability).
#   docker build --build-arg BASE_IMAGE=tensorflow/tensorflow:2.15.0-gpu -t IMAGE .   # GPU
#   docker build -t IMAGE .                                                          # CPU (default)
# The base image provides TensorFlow 2.15; the package installs without replacing it.
ARG BASE_IMAGE=tensorflow/tensorflow:2.15.0
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /opt/trainer
COPY setup.py README.md ./
COPY trainer ./trainer
RUN pip install --no-cache-dir . && python -c "import trainer.task"

ENTRYPOINT ["python", "-m", "trainer.task"]
