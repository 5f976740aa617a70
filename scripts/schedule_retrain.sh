#!/usr/bin/env bash
# Create (or update) a Cloud Scheduler job that starts a Vertex AI retraining job on a cron schedule.
#   PROJECT=p REGION=us-central1 BUCKET=gs://b IMAGE=us-central1-docker.pkg.dev/p/trainer/trainer:v1 \
#   SCHEDULE="0 3 * * 1" SERVICE_ACCOUNT=retrain@p.iam.gserviceaccount.com \
#   scripts/schedule_retrain.sh -- --data='gs://b/flowers-tfr/train-*' --eval_data='gs://b/flowers-tfr/validation-*' \
#     --backbone=mobilenet_v2 --train_steps=2000
# The job body is a CustomJob made by submit_vertex.py --dry_run; its fixed baseOutputDirectory is why the
# trainer runs with --unique_run_dir (each run writes <AIP_MODEL_DIR>/<run id>).
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${IMAGE:?}" "${SERVICE_ACCOUNT:?}"
SCHEDULE=${SCHEDULE:-"0 3 * * 1"}
NAME=${NAME:-trainer-retrain}
[ "${1:-}" = "--" ] && shift
body=$(mktemp)
python "$(dirname "$0")/submit_vertex.py" --dry_run --project="$PROJECT" --region="$REGION" --bucket="$BUCKET" \
  --display_name="$NAME" --image_uri="$IMAGE" --service_account="$SERVICE_ACCOUNT" -- \
  --unique_run_dir --warm_start_from=champion --champion_dir="$BUCKET/champions/$NAME" "$@" > "$body"
uri="https://${REGION}-aiplatform.googleapis.com/v1/projects/${PROJECT}/locations/${REGION}/customJobs"
verb=create
gcloud scheduler jobs describe "$NAME" --location="$REGION" >/dev/null 2>&1 && verb=update
gcloud scheduler jobs "$verb" http "$NAME" --location="$REGION" --schedule="$SCHEDULE" --uri="$uri" \
  --http-method=POST --message-body-from-file="$body" --headers="Content-Type=application/json" \
  --oauth-service-account-email="$SERVICE_ACCOUNT" \
  --oauth-token-scope="https://www.googleapis.com/auth/cloud-platform"
echo "scheduled $NAME ($SCHEDULE): POST $uri" >&2
