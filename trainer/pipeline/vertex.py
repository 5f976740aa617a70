"""Vertex AI Pipelines requests for the retraining pipeline: one run (`PipelineService.CreatePipelineJob`) and a
schedule (`ScheduleService.CreateSchedule`), built from the compiled spec and the trainer's flags.

`--dry_run` prints the request as JSON (the API's own form) and contacts nothing; otherwise the same request is
sent with the v1 clients of google-cloud-aiplatform.
"""
import dataclasses
import re
import time
from typing import Dict, Optional, Sequence

from trainer.errors import UsageError

_CRON_FIELD = re.compile(r"^[\dA-Za-z*/,\-?LW#]+$")


@dataclasses.dataclass(frozen=True)
class Submission:
    project: str
    region: str
    bucket: str
    spec: dict  # The compiled pipeline spec (YAML, parsed).
    parameters: Dict[str, object]
    display_name: str = "trainer-retrain"
    service_account: Optional[str] = None
    cron: Optional[str] = None
    time_zone: str = "UTC"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def pipeline_root(self) -> str:
        return f"{self.bucket.rstrip('/')}/pipeline_root"


def split_trainer_flags(args: Sequence[str]) -> Dict[str, object]:
    """The pipeline's parameters from the trainer flags after `--`: data, champion_dir and model_dir become
    parameters; the rest go into `trainer_flags` as given."""
    found, rest = {}, []
    for arg in args:
        name, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("--") and name in ("data", "champion_dir", "model_dir") and sep:
            found[name] = value
        elif arg.startswith("--") and name in ("promote", "nopromote", "unique_run_dir", "nounique_run_dir",
                                               "checkpoint_dir"):
            raise UsageError(f"{arg}: the pipeline gates with --promote=false and names each run's folder (and its "
                             "checkpoints) itself")
        else:
            rest.append(arg)
    return {**found, "trainer_flags": rest}


def check(project: str, region: str, bucket: str, parameters: Dict[str, object], cron: Optional[str] = None,
          time_zone: str = "UTC") -> None:
    """Raises UsageError naming what is wrong (before anything is sent)."""
    if not project or not region:
        raise UsageError("--project and --region are required")
    if not (bucket or "").startswith("gs://"):
        raise UsageError(f"--bucket={bucket} must be gs://BUCKET[/prefix] (the pipeline root)")
    for name in ("data", "champion_dir"):
        if not parameters.get(name):
            raise UsageError(f"the trainer flags after -- need --{name} (e.g. -- --data=gs://B/train-* "
                             "--champion_dir=gs://B/champions/NAME)")
    for name in ("champion_dir", "model_dir"):
        value = parameters.get(name)
        if value and not str(value).startswith("gs://"):
            raise UsageError(f"--{name}={value} must be gs://: the pipeline's steps run on Vertex AI")
    if cron is not None:
        fields = cron.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise UsageError(f"--cron={cron!r} must be a cron line of 5 fields: minute hour day month weekday, "
                             "e.g. '0 3 * * 1' (Mondays at 03:00)")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(time_zone)
        except Exception:
            raise UsageError(f"--time_zone={time_zone} is not an IANA time zone (e.g. UTC, Europe/Paris)") from None


def _pipeline_job(submission: Submission):
    from google.cloud import aiplatform_v1 as v1
    from google.protobuf import json_format, struct_pb2

    spec = struct_pb2.Struct()
    json_format.ParseDict(submission.spec, spec)
    values = {}
    for name, value in submission.parameters.items():
        proto = struct_pb2.Value()
        json_format.ParseDict(value, proto)
        values[name] = proto
    return v1.PipelineJob(
        display_name=submission.display_name, pipeline_spec=spec,
        runtime_config=v1.PipelineJob.RuntimeConfig(gcs_output_directory=submission.pipeline_root,
                                                    parameter_values=values),
        service_account=submission.service_account or "")


def run_request(submission: Submission):
    from google.cloud import aiplatform_v1 as v1

    job_id = f"trainer-retrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return v1.CreatePipelineJobRequest(parent=submission.parent, pipeline_job=_pipeline_job(submission),
                                       pipeline_job_id=job_id)


def schedule_request(submission: Submission):
    from google.cloud import aiplatform_v1 as v1

    schedule = v1.Schedule(
        display_name=submission.display_name, cron=f"TZ={submission.time_zone} {submission.cron}",
        max_concurrent_run_count=1,  # A run still training when the next is due: the next waits (no overlap).
        create_pipeline_job_request=v1.CreatePipelineJobRequest(parent=submission.parent,
                                                                pipeline_job=_pipeline_job(submission)))
    return v1.CreateScheduleRequest(parent=submission.parent, schedule=schedule)


def send(submission: Submission, request) -> str:
    """Sends a built request; returns the created resource's name."""
    from google.cloud import aiplatform_v1 as v1

    options = {"api_endpoint": f"{submission.region}-aiplatform.googleapis.com"}
    if isinstance(request, v1.CreateScheduleRequest):
        return v1.ScheduleServiceClient(client_options=options).create_schedule(request=request).name
    return v1.PipelineServiceClient(client_options=options).create_pipeline_job(request=request).name
