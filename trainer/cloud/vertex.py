"""Vertex AI CustomJob specs for the trainer (used by scripts/submit_vertex.py).

Worker pools go by position, as Vertex AI reads them: [0] chief (one replica),
[1] workers, [2] parameter servers, [3] evaluator; an unused position before a
used one is an empty pool. The job runs either the python package on a prebuilt
TF image (`python_package_spec`, module `trainer.task`) or a custom container
whose entrypoint is `python -m trainer.task` (`container_spec`); the trainer flags
are the args either way. `base_output_directory` makes Vertex set AIP_MODEL_DIR,
AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which the trainer follows.

Scheduling: `spot` asks for Spot capacity (strategy SPOT); `restart_on_worker_restart` makes Vertex restart every
task when one restarts (a preempted multi-worker job then resumes from its last checkpoint, all tasks together);
`timeout_secs` bounds the job. `tensorboard` names a Vertex AI TensorBoard instance, which uploads
AIP_TENSORBOARD_LOG_DIR as the job writes it (Vertex requires a service account for that).
"""
import dataclasses
import datetime
import re
import time
from typing import List, Optional, Sequence

from trainer.errors import UsageError

PREBUILT_CPU = "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-15.py310:latest"
PREBUILT_GPU = "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-15.py310:latest"
MULTI_WORKER_STRATEGIES = ("auto", "multi_worker")
PS_STRATEGIES = ("auto", "parameter_server")


@dataclasses.dataclass(frozen=True)
class JobRequest:
    project: str
    region: str
    bucket: str
    trainer_args: Sequence[str] = ()
    display_name: Optional[str] = None
    machine_type: str = "n1-standard-8"
    accelerator_type: Optional[str] = None
    accelerator_count: int = 0
    workers: int = 0
    parameter_servers: int = 0
    evaluator: bool = False
    image_uri: Optional[str] = None
    executor_image_uri: Optional[str] = None
    service_account: Optional[str] = None
    package_uri: Optional[str] = None
    spot: bool = False
    restart_on_worker_restart: Optional[bool] = None  # None: on with spot, else Vertex's default (off).
    timeout_secs: Optional[int] = None
    tensorboard: Optional[str] = None

TENSORBOARD_NAME = re.compile(r"projects/([^/]+)/locations/([^/]+)/tensorboards/([^/]+)")
DURATION = re.compile(r"(\d+)([smhd]?)")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in `3600`, `3600s`, `90m`, `24h` or `7d`.

    Raises:
        UsageError: for anything else, or zero.
    """
    match = DURATION.fullmatch(text.strip())
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2)] if match else 0
    if seconds <= 0:
        raise UsageError(f"--timeout={text}: give a positive duration such as 3600, 90m, 24h or 7d")
    return seconds


def _flag_value(args: Sequence[str], name: str) -> Optional[str]:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def validate(request: JobRequest) -> JobRequest:
    """Checks combinations before anything is built or uploaded; fills defaults.

    Raises:
        UsageError: naming the flag at fault.
    """
    if not request.bucket.startswith("gs://") or len(request.bucket) <= len("gs://"):
        raise UsageError(f"--bucket={request.bucket} must be a gs:// URI (gs://BUCKET[/prefix])")
    if request.image_uri and request.executor_image_uri:
        raise UsageError("--image_uri (custom container) and --executor_image_uri (prebuilt image) exclude "
                         "each other: give one")
    if request.accelerator_count < 0 or request.workers < 0 or request.parameter_servers < 0:
        raise UsageError("--accelerator_count, --workers and --parameter_servers must be >= 0")
    if bool(request.accelerator_type) != bool(request.accelerator_count):
        raise UsageError("--accelerator_type and --accelerator_count go together (e.g. NVIDIA_TESLA_T4 and 1)")
    executor = request.executor_image_uri
    if request.accelerator_type and executor and "gpu" not in executor:
        raise UsageError(f"--accelerator_type={request.accelerator_type} needs a GPU image, not "
                         f"--executor_image_uri={executor}")
    strategy = _flag_value(request.trainer_args, "strategy") or "auto"
    if request.workers and strategy not in MULTI_WORKER_STRATEGIES + PS_STRATEGIES:
        raise UsageError(f"--workers={request.workers} needs --strategy=multi_worker (or auto) in the trainer "
                         f"flags, not --strategy={strategy}")
    if request.parameter_servers and strategy not in PS_STRATEGIES:
        raise UsageError(f"--parameter_servers={request.parameter_servers} needs --strategy=parameter_server "
                         f"(or auto) in the trainer flags, not --strategy={strategy}")
    if _flag_value(request.trainer_args, "model_dir"):
        raise UsageError("leave --model_dir out of the trainer flags: Vertex AI sets AIP_MODEL_DIR under "
                         "--bucket's run folder")
    if request.tensorboard:
        match = TENSORBOARD_NAME.fullmatch(request.tensorboard)
        if not match:
            raise UsageError(f"--tensorboard={request.tensorboard} is not a TensorBoard resource name: give "
                             "projects/PROJECT/locations/REGION/tensorboards/ID (gcloud ai tensorboards list)")
        if not request.service_account:
            raise UsageError("--tensorboard needs --service_account=SA@PROJECT.iam.gserviceaccount.com: Vertex AI "
                             "uploads to a TensorBoard only for a job that runs as a service account")
    if request.spot and request.workers and (request.accelerator_type or "").startswith("TPU"):
        raise UsageError(f"--spot does not combine with a TPU pod slice ({request.accelerator_type} on several hosts, "
                         f"--workers={request.workers}): drop --spot or train on one TPU host")
    if not request.image_uri and not executor:
        executor = PREBUILT_GPU if request.accelerator_type else PREBUILT_CPU
    name = request.display_name or f"trainer-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(request, executor_image_uri=executor, display_name=name)


def output_directory(request: JobRequest) -> str:
    """A timestamped run folder under the bucket, so scheduled runs never share one."""
    return f"{request.bucket.rstrip('/')}/runs/{request.display_name}/{time.strftime('%Y%m%d-%H%M%S')}"


def build_custom_job(request: JobRequest, output_dir: str):
    """The google.cloud.aiplatform_v1 CustomJob for a validated request."""
    from google.cloud import aiplatform_v1 as v1

    def pool(replicas: int, with_accelerators: bool = True) -> "v1.WorkerPoolSpec":
        machine = v1.MachineSpec(machine_type=request.machine_type)
        if with_accelerators and request.accelerator_type:
            machine.accelerator_type = request.accelerator_type
            machine.accelerator_count = request.accelerator_count
        spec = v1.WorkerPoolSpec(machine_spec=machine, replica_count=replicas,
                                 disk_spec=v1.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=100))
        args = list(request.trainer_args)
        if request.image_uri:
            spec.container_spec = v1.ContainerSpec(image_uri=request.image_uri, args=args)
        else:
            spec.python_package_spec = v1.PythonPackageSpec(
                executor_image_uri=request.executor_image_uri, package_uris=[request.package_uri],
                python_module="trainer.task", args=args)
        return spec

    pools: List = [pool(1)]
    wanted = [(request.workers, lambda: pool(request.workers)),
              (request.parameter_servers, lambda: pool(request.parameter_servers, with_accelerators=False)),
              (1 if request.evaluator else 0, lambda: pool(1, with_accelerators=False))]
    last_used = max((i for i, (count, _) in enumerate(wanted) if count), default=-1)
    for i, (count, make) in enumerate(wanted[:last_used + 1]):
        pools.append(make() if count else v1.WorkerPoolSpec())
    job_spec = v1.CustomJobSpec(worker_pool_specs=pools,
                                base_output_directory=v1.GcsDestination(output_uri_prefix=output_dir))
    if request.service_account:
        job_spec.service_account = request.service_account
    if request.tensorboard:
        job_spec.tensorboard = request.tensorboard
    restart = request.spot if request.restart_on_worker_restart is None else request.restart_on_worker_restart
    if request.spot or restart or request.timeout_secs:
        job_spec.scheduling = v1.Scheduling(restart_job_on_worker_restart=restart)
        if request.spot:
            job_spec.scheduling.strategy = v1.Scheduling.Strategy.SPOT
        if request.timeout_secs:
            job_spec.scheduling.timeout = datetime.timedelta(seconds=request.timeout_secs)
    return v1.CustomJob(display_name=request.display_name, job_spec=job_spec)
