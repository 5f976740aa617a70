#!/usr/bin/env bash
# The classic transfer story on the handwritten digits scikit-learn ships (no download):
#   1. train a small CNN to tell the ten digits apart;
#   2. reuse its trunk, frozen, under a new 2-class head that separates 0 from 1.
# Both stages go through model_to_estimator + train_and_evaluate. The last line
# printed is stage 2's JSON summary.
set -euo pipefail
# SIGTERM/SIGINT to this script reach the trainer (it saves and exits 143/130), and the script exits with its status.
child=""
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM
trap '[ -n "$child" ] && kill -INT "$child" 2>/dev/null' INT
run() {  # The trainer in the background, waited for (again when a signal interrupts the wait).
  "$@" & child=$!
  local status=0
  while :; do
    wait "$child" && status=0 || status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=""
  return "$status"
}
OUT=${DEMO_DIR:-runs/demo}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== stage 1: digits 0-9, small_cnn trained from scratch -> $OUT/base" >&2
run python -m trainer.task --data=digits --backbone=small_cnn --model_dir="$OUT/base" \
  --train_steps=600 --batch_size=32 --save_checkpoints_steps=300 --eval_throttle_secs=0 \
  > "$OUT/base_summary.json"
echo "stage 1 summary: $(tail -n 1 "$OUT/base_summary.json")" >&2
echo "== stage 2: 0 vs 1, stage 1's trunk frozen, new head -> $OUT/zero_vs_one" >&2
run python -m trainer.task --data=digits --classes=0,1 --base_model="$OUT/base/keras_model.h5" --freeze=all \
  --model_dir="$OUT/zero_vs_one" --train_steps=200 --learning_rate=0.01 --batch_size=16 \
  --save_checkpoints_steps=100 --eval_throttle_secs=0
