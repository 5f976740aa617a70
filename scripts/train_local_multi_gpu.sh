#!/usr/bin/env bash
# Train on all GPUs of this machine with MirroredStrategy (one replica per GPU).
#   scripts/train_local_multi_gpu.sh --data=flowers/ --backbone=mobilenet_v2 --model_dir=runs/flowers [flags]
# --batch_size is global: each GPU gets batch_size / num_gpus. Install the GPU wheel first:
#   TRAINER_TF_PACKAGE=tensorflow pip install -e .
set -euo pipefail
gpus=$(python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null)
if [ "${gpus:-0}" -lt 1 ]; then
  echo "error: no GPU visible to TensorFlow (is the GPU wheel installed? see README)" >&2
  exit 1
fi
echo "training on $gpus GPU(s)" >&2
exec python -m trainer.task --strategy=mirrored --num_gpus="$gpus" "$@"
