#!/usr/bin/env bash
# One scheduled retraining run: a fresh timestamped run folder, warm-started from the current champion,
# promoted into the champion folder only if it beats the champion on this run's evaluation data.
#   scripts/retrain.sh --champion_dir=gs://B/champions/flowers --model_dir=gs://B/retrain --data=... [trainer flags]
# On Vertex AI the same flags go into the job's args (see README, "Scheduled retraining").
set -euo pipefail
exec python -m trainer.task --unique_run_dir --warm_start_from=champion "$@"
