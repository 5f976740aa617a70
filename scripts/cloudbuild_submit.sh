#!/usr/bin/env bash
# cloudbuild.yaml's check and submit steps: scripts/submit_vertex.py with the build's substitutions, which the
# build passes as environment variables (ENGINE, DEVICE, PROJECT, REGION, BUCKET, MACHINE_TYPE, TAG, IMAGE, and the
# '|'-separated TRAINER_ARGS and SUBMIT_ARGS). Extra arguments go to submit_vertex.py: the check step adds --dry_run
# (every flag parsed and validated, the job printed, nothing contacted).
set -euo pipefail
case "${ENGINE:-}" in
  keras | estimator) ;;
  *) echo "error: _ENGINE=${ENGINE:-} must be keras (TensorFlow 2.21) or estimator (TensorFlow 2.15)" >&2; exit 1 ;;
esac
IFS='|' read -ra TRAINER_FLAGS <<< "${TRAINER_ARGS:-}"
IFS='|' read -ra SUBMIT_FLAGS <<< "${SUBMIT_ARGS:-}"
ACCELERATOR=no
for flag in "${SUBMIT_FLAGS[@]}"; do [[ "$flag" == --accelerator_type=* ]] && ACCELERATOR=yes; done
case "${DEVICE:-}:$ACCELERATOR" in
  cpu:no | gpu:yes) ;;
  cpu:yes) echo "error: _SUBMIT_ARGS asks for accelerators but _DEVICE=cpu builds a CPU image: set _DEVICE=gpu" >&2; exit 1 ;;
  gpu:no) echo "error: _DEVICE=gpu builds a CUDA image but _SUBMIT_ARGS asks for no GPU: add" \
    "--accelerator_type=NVIDIA_TESLA_T4|--accelerator_count=1 (or another type)" >&2; exit 1 ;;
  *) echo "error: _DEVICE=${DEVICE:-} must be cpu or gpu" >&2; exit 1 ;;
esac
exec python scripts/submit_vertex.py --project="$PROJECT" --region="$REGION" --bucket="$BUCKET" \
  --machine_type="$MACHINE_TYPE" --display_name="trainer-$TAG" --engine="$ENGINE" --image_uri="$IMAGE" \
  "${SUBMIT_FLAGS[@]}" "$@" -- "${TRAINER_FLAGS[@]}"
