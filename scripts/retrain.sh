#!/usr/bin/env bash
# One scheduled retraining run: a fresh timestamped run folder, warm-started from the current champion,
# promoted into the champion folder only if it beats the champion on this run's evaluation data.
#   scripts/retrain.sh --champion_dir=gs://B/champions/flowers --model_dir=gs://B/retrain --data=... [trainer flags]
# With PROJECT set, a run that was promoted is then registered in the Vertex AI Model Registry
# (scripts/register_model.py) as a new version with the alias "champion":
#   PROJECT=p [REGION=us-central1] [PARENT_MODEL=<model id>] [DISPLAY_NAME=flowers] [REGISTER_ARGS="--labels=..."]
#   [SERVING_IMAGE=<the serving container's URI, docker build --target serve>: served on TensorFlow 2.21]
#   [REGISTER_DRY_RUN=1: print the Model and the request, contact nothing]
# The trainer's summary stays the last stdout line when nothing is registered; the registered model's
# name@version follows it otherwise. On Vertex AI the same flags go into the job's args (README, "Scheduled retraining").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
export PYTHONPATH="$here/..${PYTHONPATH:+:$PYTHONPATH}"  # This checkout's trainer package.
out=$(mktemp)
fifo=$(mktemp -u)
trap 'rm -f "$out" "$fifo"' EXIT
# SIGTERM (a preemption, `docker stop`, this script as a container's PID 1) and SIGINT (Ctrl-C) are passed on to
# the trainer, which saves a checkpoint and exits 143 (130); the script waits for it and exits with its status.
# Nothing is registered after a signal or a failure.
trainer="" got="" signalled=""
forward() {
  got=$1 signalled=$1
  [ -z "$trainer" ] || kill -s "$1" "$trainer" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
mkfifo "$fifo"
(trap '' TERM INT; exec tee "$out" <"$fifo") &  # Ignoring the signals, it passes on the trainer's last lines.
tee_pid=$!
set -m  # The trainer in its own process group: a terminal's Ctrl-C reaches it once, through forward().
"$PYTHON" -m trainer.task --unique_run_dir --warm_start_from=champion "$@" >"$fifo" &
trainer=$!
set +m
[ -z "$got" ] || kill -s "$got" "$trainer" 2>/dev/null || true  # A signal before $trainer was set.
status=""
while :; do  # wait returns early when a signal's trap ran; the trainer is then still saving.
  got="" rc=0
  wait "$trainer" || rc=$?
  [ "$rc" -eq 127 ] && [ -n "$status" ] && break  # Already reported: the signal came as the trainer ended.
  status=$rc
  [ -n "$got" ] || break
done
wait "$tee_pid" || true  # The trainer's summary is in "$out".
[ "$status" -eq 0 ] || exit "$status"
if [ -n "$signalled" ]; then
  echo "retrain: SIG$signalled received as the trainer finished; nothing registered" >&2
  exit $((128 + $(kill -l "$signalled")))
fi
trap 'exit $((128 + $(kill -l TERM)))' TERM  # From here on a signal ends the script: no registration after it.
trap 'exit $((128 + $(kill -l INT)))' INT
[ -n "${PROJECT:-}" ] || exit 0

champion_dir=""
next_is_dir=""
for arg in "$@"; do  # absl takes both --champion_dir=X and --champion_dir X.
  if [ -n "$next_is_dir" ]; then champion_dir=$arg; next_is_dir=""; continue; fi
  case "$arg" in
    --champion_dir=*) champion_dir=${arg#--champion_dir=} ;;
    --champion_dir) next_is_dir=1 ;;
  esac
done
[ -n "$champion_dir" ] || { echo "error: PROJECT is set but no --champion_dir was given: nothing to register" >&2; exit 1; }
# The champion's model folder, if CHAMPION.json names a version promoted by this very run.
artifact=$("$PYTHON" - "$(tail -n 1 "$out")" "$champion_dir" <<'EOF'
import json, sys
from trainer.retrain import champion_store as champion
from trainer.config import to_gcs_uri
summary, root = json.loads(sys.argv[1]), to_gcs_uri(sys.argv[2]).rstrip("/")
pointer, _ = champion.open_store(root).read_pointer()
if pointer and pointer.get("source_run") == summary.get("model_dir"):
    print(f"{root}/{pointer['version']}/model")
EOF
)
if [ -z "$artifact" ]; then
  echo "retrain: this run was not promoted; nothing registered" >&2
  exit 0
fi
args=(--project="$PROJECT" --region="${REGION:-us-central1}" --artifact_uri="$artifact"
      --display_name="${DISPLAY_NAME:-$(basename "$champion_dir")}" --version_aliases=champion)
[ -n "${PARENT_MODEL:-}" ] && args+=(--parent_model="$PARENT_MODEL")
[ -n "${SERVING_IMAGE:-}" ] && args+=(--serving_image="$SERVING_IMAGE")
[ "${REGISTER_DRY_RUN:-0}" = 1 ] && args+=(--dry_run)
rm -f "$out" "$fifo"  # exec skips the EXIT trap.
# shellcheck disable=SC2086
exec "$PYTHON" "$here/register_model.py" "${args[@]}" ${REGISTER_ARGS:-}
