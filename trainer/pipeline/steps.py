"""What each step of the retraining pipeline does, as plain functions (the KFP components in spec.py call them).

- train: `python -m trainer.task` in its own process, exactly as a user runs it: the run's folder is
  <model_dir>/<run id> (a retried step, or the pipeline run again with the same `run_id`, resumes there), warm
  started from the champion when there is one, gated with `--promote=false` (the gate's decision goes on record in
  run_info.json; CHAMPION.json is left to the promote step). A trainer that fails fails the step with its own
  `error:` line.
- gate: the decision and the gate's figures from the run's record.
- promote: `trainer.champion promote` (applies a `promote` decision while the champion gated against is current).
- register: a Model Registry version of the promoted champion with the serving container.
- deploy: the registered version onto an endpoint.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence

from trainer.errors import UsageError

# Flags the pipeline sets itself: the user's would contradict the steps.
OWNED_FLAGS = ("model_dir", "champion_dir", "promote", "unique_run_dir", "checkpoint_dir")


ERRORS_ENV = "TRAINER_PIPELINE_ERRORS"  # `python -m trainer.pipeline local`: where failed steps put their line.


class StepFailed(RuntimeError):
    """A step's failure, its message the trainer's (or the step's) one `error:` line (also appended, with the step's
    name, to $TRAINER_PIPELINE_ERRORS when set)."""

    def __init__(self, message: str, step: str = ""):
        super().__init__(message)
        where = os.environ.get(ERRORS_ENV)
        if where:
            with open(where, "a") as f:
                f.write(message.replace("error: ", f"error: step {step or '?'}: ", 1) + "\n")



@contextlib.contextmanager
def failing_cleanly():
    """Around a step: its failure is its one `error:` line and exit status 1, not a traceback (KFP shows the step's
    log; the run fails at this step)."""
    try:
        yield
    except StepFailed as e:
        sys.stdout.flush()
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


def run_dir(model_dir: str, run_id: str, job_name: str) -> str:
    name = run_id or job_name
    if not name or "/" in name:
        raise StepFailed(step="train", message=f"error: the run id {name!r} must be a non-empty folder name")
    return f"{model_dir.rstrip('/')}/{name}"


def train(data: str, model_dir: str, champion_dir: str, flags: Sequence[str], run_id: str = "",
          job_name: str = "", python: Optional[str] = None) -> Dict[str, object]:
    """Trains (or resumes) the run; returns {"run_dir", "metrics"} from the trainer's summary line."""
    folder = run_dir(model_dir, run_id, job_name)
    owned = [f for f in flags if f.lstrip("-").split("=")[0] in OWNED_FLAGS + tuple(f"no{o}" for o in OWNED_FLAGS)]
    if owned:
        raise StepFailed(step="train", message=f"error: {', '.join(owned)}: the pipeline sets --model_dir (and "
                         "with it the checkpoints), --champion_dir and --promote itself (pass them as the pipeline's "
                         "parameters)")
    args = [f"--data={data}", *flags, f"--model_dir={folder}", f"--champion_dir={champion_dir}", "--promote=false"]
    if not any(f.startswith("--warm_start_from") for f in flags):  # No champion yet: the usual weights.
        args.append("--warm_start_from=champion")
    print("train: python -m trainer.task " + " ".join(args), flush=True)
    status, out, errors = _run_streamed([python or sys.executable, "-m", "trainer.task", *args])
    if status != 0:
        raise StepFailed(step="train", message=_error_line(errors, status) or
                         f"error: the trainer exited with status {status} (its console is above)")
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise StepFailed(step="train", message="error: the trainer exited 0 without its summary line (its console "
                         "is above)") from None

    metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"run_dir": folder, "metrics": metrics}


def gate(run_dir_: str) -> Dict[str, object]:
    """{"decision": promote|keep, "reason", "figures": numbers for the Metrics artifact, "record": the whole}."""
    from trainer.util import files

    info = files.read_json(f"{run_dir_}/run_info.json")
    record = (info or {}).get("promotion")
    if not record:
        raise StepFailed(step="gate", message=f"error: {run_dir_}/run_info.json has no gate record (the train "
                         "step runs the gate)")
    figures = {k: float(record[k]) for k in ("challenger", "champion") if isinstance(record.get(k), (int, float))}
    for key, value in (record.get("gate") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            figures[f"gate_{key}"] = float(value)
    # promote: the gate passed (or this run is already the champion, before a restart: promote says so again and
    # the steps after it run); keep: not promoted.
    decision = "promote" if record.get("decision") == "promote" or record.get("promoted") else "keep"
    shown = {k: v for k, v in record.items() if k != "pending"}
    print(f"gate: {decision} ({record.get('reason', '')})", flush=True)
    return {"decision": decision, "reason": record.get("reason", ""), "figures": figures, "record": shown}


def promote(champion_dir: str, run_dir_: str) -> str:
    """The version promoted ("" when the champion changed since the gate: said, not promoted)."""
    from trainer.retrain.deferred import promote_gated

    try:
        record = promote_gated(champion_dir, run_dir_)
    except UsageError as e:
        raise StepFailed(step="promote", message=f"error: {e}") from None
    except Exception as e:  # Cloud Storage gone, a full disk: one line (the step can be retried).
        raise StepFailed(step="promote", message=f"error: promoting {run_dir_} failed: {type(e).__name__}: "
                         f"{str(e).strip()[:300]}; CHAMPION.json is as `python -m trainer.champion show` says; "
                         "retry the step") from None
    print(f"promote: {'promoted' if record.get('promoted') else 'not promoted'} ({record.get('reason')})", flush=True)
    return record.get("version") or "" if record.get("promoted") else ""


def register(project: str, region: str, champion_dir: str, version: str, display_name: str, parent_model: str,
             serving_image: str, dry_run: bool) -> str:
    """Registers <champion_dir>/<version>/model as a version aliased `champion`; returns MODEL@VERSION (under
    dry_run, what the upload would name, the Model's JSON printed)."""
    from trainer.retrain import registry

    request = registry.Registration(
        project=project, region=region, artifact_uri=f"{champion_dir.rstrip('/')}/{version}/model",
        display_name=display_name or os.path.basename(champion_dir.rstrip("/")), parent_model=parent_model or None,
        version_aliases=("champion",), serving_image_uri=serving_image or None, dry_run=dry_run)
    print(f"register: {request.artifact_uri} as {request.display_name}, image "
          f"{serving_image or registry.PREBUILT_TF_CPU_SERVING}", flush=True)
    try:
        shown = registry.register(request)
    except UsageError as e:
        raise StepFailed(step="register", message=f"error: {e}") from None
    if not dry_run:
        return shown
    print(shown, flush=True)
    model = parent_model if "/" in (parent_model or "") else \
        f"projects/{project}/locations/{region}/models/{parent_model or 'NEW_MODEL'}"
    return f"{model}@DRY_RUN"


def deploy(model: str, endpoint: str, region: str, machine_type: str, dry_run: bool) -> str:
    """Deploys MODEL@VERSION to the endpoint (an id, or its full name) with all traffic; returns the deployed model's
    id (under dry_run, the request)."""
    if "/" not in endpoint:
        project = model.split("/")[1] if model.startswith("projects/") else ""
        endpoint = f"projects/{project}/locations/{region}/endpoints/{endpoint}"
    request = {"endpoint": endpoint, "deployed_model": {"model": model, "dedicated_resources": {
        "machine_spec": {"machine_type": machine_type}, "min_replica_count": 1, "max_replica_count": 1}},
        "traffic_split": {"0": 100}}
    if dry_run:
        print("deploy: " + json.dumps(request), flush=True)
        return json.dumps(request)
    from google.cloud import aiplatform_v1 as v1

    client = v1.EndpointServiceClient(client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"})
    response = client.deploy_model(request=v1.DeployModelRequest(**request)).result(timeout=3600)
    return response.deployed_model.id


def _run_streamed(command: List[str]):
    """Runs `command`, its console passed through live; SIGTERM/SIGINT to this step go on to it (the trainer then
    saves a checkpoint). Returns (status, stdout, the error lines of stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    forward = {}
    if threading.current_thread() is threading.main_thread():
        forward = {sig: signal.signal(sig, lambda number, _frame: proc.send_signal(number))
                   for sig in (signal.SIGTERM, signal.SIGINT)}
    out, errors = [], []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            if line.startswith("error:"):
                errors.append(line.rstrip("\n"))
        status = proc.wait()
        reader.join()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
    sys.stdout.write("".join(out))
    return status, "".join(out), errors


def _error_line(errors: List[str], status: int) -> Optional[str]:
    """The trainer's own `error:` line (it prints one for every mistake), with its exit status."""
    return f"{errors[-1]} (exit status {status})" if errors else None
