"""Vertex AI Model Registry uploads of serving SavedModels (used by scripts/register_model.py).

A model is uploaded with `ModelService.UploadModel`: the SavedModel folder as
`artifact_uri`, served by a prebuilt TensorFlow CPU prediction container unless
another image is named, as a new version of `parent_model` when one is given. The
run's metrics (the champion version's metrics.json, or the run's eval_metrics.json
next to an export folder) go into the description.
"""
import dataclasses
import json
import re
from typing import Dict, Optional, Sequence, Tuple

from trainer.cloud import gcs
from trainer.errors import UsageError

PREBUILT_TF_CPU_SERVING = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
PREBUILT_END = "2027-01-14"  # Vertex AI's TF 2.15 prediction images: end of availability.
# The serving image's routes and port (the Dockerfile's `serve` target, `python -m trainer.serve`).
SERVE_ROUTES = {"predict_route": "/predict", "health_route": "/health", "port": 8080}
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_ALIAS = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
_MODEL_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/models/[^/]+$")
_METRIC_KEYS = ("accuracy", "loss", "global_step")


@dataclasses.dataclass(frozen=True)
class Registration:
    project: str
    region: str
    artifact_uri: str
    display_name: str
    parent_model: Optional[str] = None
    version_aliases: Tuple[str, ...] = ()
    labels: Tuple[Tuple[str, str], ...] = ()
    serving_image_uri: Optional[str] = None
    description: Optional[str] = None
    dry_run: bool = False

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


def parse_labels(spec: str) -> Tuple[Tuple[str, str], ...]:
    """--labels=k=v,k2=v2, checked against Vertex AI's label rules."""
    labels = []
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--labels: '{item}' must look like key=value")
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise UsageError(f"--labels: '{item}': keys start with a lowercase letter; keys and values use only "
                             "lowercase letters, digits, '_' and '-', at most 63 characters")
        labels.append((key, value))
    return tuple(labels)


def validate(request: Registration) -> Registration:
    """Checks the flags and their combinations; fills the parent model's full name.

    Raises:
        UsageError: naming the flag at fault.
    """
    for flag in ("project", "region", "artifact_uri", "display_name"):
        if not getattr(request, flag):
            raise UsageError(f"--{flag} is required")
    if not request.dry_run and not gcs.is_gcs(request.artifact_uri):
        raise UsageError(f"--artifact_uri={request.artifact_uri} must be a gs:// URI (Vertex AI reads the model "
                         "from Cloud Storage); only --dry_run takes a local folder")
    for alias in request.version_aliases:
        if alias == "default" or not _ALIAS.match(alias):
            raise UsageError(f"--version_aliases: '{alias}' must start with a lowercase letter, use letters, digits "
                             "and '-', end with a lowercase letter or digit, and not be 'default'")
    parent_model = request.parent_model
    if parent_model and "/" not in parent_model:  # A bare model id.
        parent_model = f"{request.parent}/models/{parent_model}"
    if parent_model and not _MODEL_NAME.match(parent_model):
        raise UsageError(f"--parent_model={request.parent_model} must be a model id or "
                         "projects/P/locations/R/models/ID")
    if parent_model and not parent_model.startswith(request.parent + "/"):
        raise UsageError(f"--parent_model={parent_model} is not in --project={request.project} "
                         f"--region={request.region}")
    return dataclasses.replace(request, parent_model=parent_model, artifact_uri=request.artifact_uri.rstrip("/"))


def is_prebuilt(image: Optional[str]) -> bool:
    """No image (the default), or one of Vertex AI's prebuilt prediction images: TF Serving inside, its own routes."""
    return not image or "/vertex-ai/prediction/" in image


def check_artifact(uri: str, serving_image: Optional[str] = None) -> Dict[str, float]:
    """Checks a SavedModel is under `uri` (and, for the prebuilt TF 2.15 image, that TensorFlow 2.15 or older wrote
    it); returns the run's metrics found next to it (or {}).

    Raises:
        UsageError: no saved_model.pb directly under `uri`; a SavedModel the prebuilt image cannot serve.
    """
    read = _read_gcs if gcs.is_gcs(uri) else _read_local
    if read(f"{uri}/saved_model.pb", probe=True) is None:
        raise UsageError(f"--artifact_uri={uri} has no saved_model.pb: give an export version folder "
                         "(<model_dir>/export/best/<version>) or a champion version (<champion_dir>/<version>/model)")
    if is_prebuilt(serving_image):
        written_by = tensorflow_version(read(f"{uri}/saved_model.pb"), uri)
        if written_by is None:
            import sys

            sys.stderr.write(f"note: TensorFlow is not installed here: whether {uri} was written by a TensorFlow the "
                             "prebuilt image can serve (2.15 or older) was not checked\n")
        elif tuple(int(p) for p in written_by.split(".")[:2]) > (2, 15):
            raise UsageError(f"--artifact_uri={uri} was written by TensorFlow {written_by}; the prebuilt image "
                             f"({PREBUILT_TF_CPU_SERVING}) serves TensorFlow 2.15 SavedModels: build the serving "
                             "container (docker build --target serve) and pass --serving_image=IMAGE_URI")
    parent = uri.rsplit("/", 1)[0]
    for path in (f"{parent}/metrics.json", f"{parent.rsplit('/', 2)[0]}/eval_metrics.json"):
        raw = read(path)
        if raw is not None:
            metrics = json.loads(raw)
            return {k: metrics[k] for k in _METRIC_KEYS if isinstance(metrics.get(k), (int, float))}
    return {}


def tensorflow_version(saved_model_pb: bytes, uri: str = "") -> Optional[str]:
    """The TensorFlow version that wrote a saved_model.pb ("2.21.0"), or None where TensorFlow is not installed.

    Raises:
        UsageError: the file is not a SavedModel.
    """
    try:
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import saved_model_pb2
    except ImportError:
        return None
    try:
        proto = saved_model_pb2.SavedModel.FromString(saved_model_pb)
    except DecodeError:
        raise UsageError(f"--artifact_uri={uri}: saved_model.pb is not a SavedModel (it does not parse)") from None
    versions = [g.meta_info_def.tensorflow_version for g in proto.meta_graphs if g.meta_info_def.tensorflow_version]
    return versions[0] if versions and re.match(r"^\d+\.\d+", versions[0]) else None


def _read_local(path: str, probe: bool = False) -> Optional[bytes]:
    import os

    if not os.path.isfile(path):
        return None
    return b"" if probe else open(path, "rb").read()


def _read_gcs(path: str, probe: bool = False) -> Optional[bytes]:
    from google.api_core import exceptions

    bucket, name = gcs.split_uri(path)
    try:
        blob = gcs.client().bucket(bucket).get_blob(name, retry=gcs.retry())
    except exceptions.NotFound:
        raise UsageError(f"--artifact_uri: no such bucket '{bucket}'") from None
    except exceptions.Forbidden as e:
        raise UsageError(f"--artifact_uri: access to gs://{bucket} denied ({e.message[:160]})") from None
    if blob is None and probe and gcs.client().lookup_bucket(bucket, retry=gcs.retry()) is None:
        raise UsageError(f"--artifact_uri: no such bucket '{bucket}'")
    if blob is None:
        return None
    return b"" if probe else blob.download_as_bytes(retry=gcs.retry())


def describe(request: Registration, metrics: Dict[str, float]) -> str:
    if request.description:
        return request.description
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    return f"trainer SavedModel from {request.artifact_uri}" + (f"; evaluation: {shown}" if shown else "")


def build_model(request: Registration, metrics: Dict[str, float]):
    """The google.cloud.aiplatform_v1 Model to upload."""
    from google.cloud import aiplatform_v1 as v1

    description = describe(request, metrics)
    if not is_prebuilt(request.serving_image_uri):  # The trainer's serving container: its routes and port.
        container = v1.ModelContainerSpec(
            image_uri=request.serving_image_uri, predict_route=SERVE_ROUTES["predict_route"],
            health_route=SERVE_ROUTES["health_route"], ports=[v1.Port(container_port=SERVE_ROUTES["port"])])
    else:
        container = v1.ModelContainerSpec(image_uri=request.serving_image_uri or PREBUILT_TF_CPU_SERVING)
    return v1.Model(
        display_name=request.display_name, description=description, version_description=description,
        artifact_uri=request.artifact_uri, version_aliases=list(request.version_aliases),
        labels=dict(request.labels), container_spec=container)


def build_request(request: Registration, model):
    """The UploadModelRequest (a new version of parent_model when given)."""
    from google.cloud import aiplatform_v1 as v1

    return v1.UploadModelRequest(parent=request.parent, model=model, parent_model=request.parent_model or "")


def endpoint(region: str) -> str:
    return f"{region}-aiplatform.googleapis.com"


def upload(request: Registration, upload_request, timeout: float = 1800):
    """Calls ModelService.UploadModel and waits; returns the UploadModelResponse."""
    from google.cloud import aiplatform_v1 as v1

    client = v1.ModelServiceClient(client_options={"api_endpoint": endpoint(request.region)})
    return client.upload_model(request=upload_request).result(timeout=timeout)


def register(request: Registration, log=None) -> str:
    """Checks and registers (or, with dry_run, builds and shows) a version; returns what to print on stdout: the
    Model's JSON under dry_run (its request on `log`), else MODEL@VERSION. What scripts/register_model.py and the
    pipeline's register step run.

    Raises:
        UsageError: a bad argument, no SavedModel, a SavedModel the image cannot serve, a failed upload.
    """
    import sys

    log = log or sys.stderr
    request = validate(request)
    if request.dry_run and gcs.is_gcs(request.artifact_uri):
        metrics = {}  # Contacts nothing: the gs:// folder is checked by the real upload only.
        log.write(f"note: --dry_run does not check {request.artifact_uri} for saved_model.pb\n")
    else:
        metrics = check_artifact(request.artifact_uri, request.serving_image_uri)
    if is_prebuilt(request.serving_image_uri):
        log.write(f"note: served by a prebuilt TensorFlow image; the newest, 2.15, Vertex AI retires on {PREBUILT_END};"
                  " --serving_image=IMAGE serves on TensorFlow 2.21 (docs/using.md, \"Serving\")\n")
    model = build_model(request, metrics)
    upload_request = build_request(request, model)
    url = f"https://{endpoint(request.region)}/v1/{request.parent}/models:upload"
    if request.dry_run:
        log.write(f"request: POST {url}\n{type(upload_request).to_json(upload_request)}\n")
        return type(model).to_json(model)
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError

    try:
        response = upload(request, upload_request)
    except (exceptions.GoogleAPIError, DefaultCredentialsError) as e:
        raise UsageError(f"the upload to {url} failed: {type(e).__name__}: {str(e)[:300]}") from None
    log.write(f"registered {response.model} version {response.model_version_id}\n")
    return f"{response.model}@{response.model_version_id}"


def split_list(spec: Optional[str]) -> Sequence[str]:
    return tuple(filter(None, (part.strip() for part in (spec or "").split(","))))
