#!/usr/bin/env bash
# Train on all GPUs of this machine with MirroredStrategy (one replica per GPU).
#   scripts/train_local_multi_gpu.sh --data=flowers/ --backbone=mobilenet_v2 --model_dir=runs/flowers [flags]
# --batch_size is global: each GPU gets batch_size / num_gpus. Install a GPU build of TensorFlow first, one of:
#   pip install -e ".[keras-gpu]"   # TensorFlow 2.21 + CUDA wheels, Python 3.12/3.13; then pass --engine=keras
#   pip install -e ".[gpu]"         # TensorFlow 2.15, Python 3.10/3.11 (the Estimator engine)
set -euo pipefail
gpus=$(python -c "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))" 2>/dev/null)
if [ "${gpus:-0}" -lt 1 ]; then
  echo "error: no GPU visible to TensorFlow (install trainer[keras-gpu] or trainer[gpu], check nvidia-smi), or" \
    "train on the CPU with python -m trainer.task" >&2
  exit 1
fi
echo "training on $gpus GPU(s)" >&2
exec python -m trainer.task --strategy=mirrored --num_gpus="$gpus" "$@"
