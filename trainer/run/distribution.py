"""Distribution: one function maps --strategy to a tf.distribute strategy and RunConfig parts.

Strategies and where they come from:
- one_device: no strategy, the Estimator's default placement.
- mirrored: all local GPUs (or --num_gpus), or --num_cpu_replicas CPU "replicas"
  (the Estimator runs its own Session, so the session config must expose N CPU devices).
- multi_worker: MultiWorkerMirroredStrategy over TF_CONFIG (chief + workers, as Vertex
  AI sets it for multi-replica jobs). An evaluator task builds no strategy.
- parameter_server: tf.compat.v1 ParameterServerStrategy, for Vertex's parameter-server pool.
- tpu: the TPU path (trainer.engines.estimator.tpu); with --use_tpu=false the same path runs on CPU/GPU.
- auto: multi_worker when TF_CONFIG names several workers, else mirrored with more than one
  GPU, else one_device.
"""
import dataclasses
import json
import os
from typing import Optional

import tensorflow as tf

from trainer.errors import UsageError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "parameter_server", "tpu")
TASK_TYPES = ("chief", "master", "worker", "ps", "evaluator")


@dataclasses.dataclass
class Plan:
    """What a task runs: the strategy, its replica count and its role."""

    name: str
    strategy: Optional[object] = None
    num_replicas: int = 1
    session_config: Optional[tf.compat.v1.ConfigProto] = None
    task_type: str = "chief"
    task_index: int = 0
    tpu_resolver: Optional[object] = None

    @property
    def is_chief(self) -> bool:
        return self.task_type in ("chief", "master")

    @property
    def is_evaluator(self) -> bool:
        return self.task_type == "evaluator"

    @property
    def distributed(self) -> bool:
        """True when other processes take part (TF_CONFIG with a cluster)."""
        return self.name in ("multi_worker", "parameter_server") or self.is_evaluator


def parse_tf_config(raw: Optional[str] = None) -> dict:
    """TF_CONFIG as a dict ({} when unset), with `master` renamed `chief`.

    Raises:
        UsageError: not valid JSON, or a task type that is not one of TASK_TYPES.
    """
    raw = os.environ.get("TF_CONFIG", "") if raw is None else raw
    if not raw.strip():
        return {}
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UsageError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(tf_config, dict):
        raise UsageError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster = dict(tf_config.get("cluster", {}))
    task = dict(tf_config.get("task", {}))
    for name in list(cluster) + ([task["type"]] if "type" in task else []):
        if name not in TASK_TYPES:
            raise UsageError(f"TF_CONFIG names the unknown task type '{name}'; valid: {', '.join(TASK_TYPES)}")
    if "master" in cluster:  # Legacy name of the chief (older Cloud ML Engine jobs).
        cluster["chief"] = cluster.pop("master")
    if task.get("type") == "master":
        task["type"] = "chief"
    if task and task.get("type") != "evaluator":
        pool = cluster.get(task.get("type"), [])
        if not isinstance(task.get("index", 0), int) or not 0 <= task.get("index", 0) < max(len(pool), 1):
            raise UsageError(f"TF_CONFIG's task {task} is not in its cluster ({len(pool)} '{task.get('type')}')")
    return {**tf_config, "cluster": cluster, "task": task}


def choose(name: str, tf_config: dict, num_gpus: int) -> str:
    """The strategy name `auto` resolves to, or `name` itself."""
    if name not in STRATEGIES:
        raise UsageError(f"--strategy={name} is unknown; choose one of: {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    cluster = tf_config.get("cluster", {})
    if cluster.get("ps"):
        return "parameter_server"
    if len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "one_device"


def get_plan(name: str, num_gpus: Optional[int] = None, num_cpu_replicas: int = 0,
             tf_config_raw: Optional[str] = None, tpu: Optional[str] = None, use_tpu: bool = True,
             eager: bool = False) -> Plan:
    """Maps --strategy (and TF_CONFIG, devices) to a Plan. Builds the strategy object.

    `eager`: for an engine that runs the strategy eagerly (the Keras engine): CPU replicas as logical
    devices, --strategy=tpu as a TPUStrategy (the Estimator engine builds its TPU estimator from the resolver).

    Raises:
        UsageError: unknown name, bad TF_CONFIG, or a strategy the cluster cannot run.
    """
    tf_config = parse_tf_config(tf_config_raw)
    visible_gpus = len(tf.config.list_physical_devices("GPU"))
    gpus = visible_gpus if num_gpus is None else num_gpus
    if num_gpus is not None and num_gpus > visible_gpus:
        raise UsageError(f"--num_gpus={num_gpus} but this machine has {visible_gpus} GPU(s)")
    resolved = choose(name, tf_config, gpus if not num_cpu_replicas else 0)
    task = tf_config.get("task", {})
    task_type, task_index = task.get("type", "chief"), int(task.get("index", 0))
    if num_cpu_replicas and resolved != "mirrored":
        raise UsageError(f"--num_cpu_replicas goes with --strategy=mirrored, not {resolved}")
    if resolved in ("multi_worker", "parameter_server") and not tf_config.get("cluster"):
        raise UsageError(f"--strategy={resolved} needs TF_CONFIG with a cluster (Vertex AI sets it for "
                         "multi-replica jobs; python -m trainer.launch_local does it on one machine)")
    if task_type == "evaluator":
        # The evaluator only reads checkpoints; building a collective strategy there fails
        # (its cluster has no 'evaluator' key).
        return Plan(resolved, None, 1, task_type=task_type, task_index=task_index)
    if resolved == "tpu":
        resolver = _tpu_resolver(tpu) if use_tpu else None
        if eager and resolver is not None:  # Not run here (no TPU): see the README's "Which engine".
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
            return Plan(resolved, strategy, strategy.num_replicas_in_sync, task_type=task_type,
                        task_index=task_index, tpu_resolver=resolver)
        return Plan(resolved, task_type=task_type, task_index=task_index, tpu_resolver=resolver)
    if resolved == "one_device":
        return Plan(resolved, task_type=task_type, task_index=task_index)
    if resolved == "mirrored":
        if num_cpu_replicas:
            devices = [f"/cpu:{i}" for i in range(num_cpu_replicas)]
            if eager:  # Eager Keras places replicas on logical devices (the Estimator's session on device_count).
                _split_cpu(num_cpu_replicas)
            session = tf.compat.v1.ConfigProto(device_count={"CPU": num_cpu_replicas},
                                               allow_soft_placement=True)
            return Plan(resolved, tf.distribute.MirroredStrategy(devices), num_cpu_replicas, session,
                        task_type, task_index)
        devices = [f"/gpu:{i}" for i in range(gpus)] or ["/cpu:0"]
        return Plan(resolved, tf.distribute.MirroredStrategy(devices), len(devices), None, task_type, task_index)
    cluster = tf_config["cluster"]
    if resolved == "multi_worker":
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        # Collective ops need threads for every peer, or the cluster can hang.
        session = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=workers + 2, allow_soft_placement=True)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Plan(resolved, strategy, strategy.num_replicas_in_sync, session, task_type, task_index)
    if not cluster.get("ps"):
        raise UsageError("--strategy=parameter_server needs 'ps' tasks in TF_CONFIG's cluster")
    strategy = tf.compat.v1.distribute.experimental.ParameterServerStrategy()
    return Plan(resolved, strategy, strategy.num_replicas_in_sync, None, task_type, task_index)


def _split_cpu(replicas: int) -> None:
    """The host CPU as `replicas` logical devices; possible only before TensorFlow's runtime starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    existing = tf.config.get_logical_device_configuration(cpu)
    if existing and len(existing) >= replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        raise UsageError(f"--num_cpu_replicas={replicas}: TensorFlow had already started in this process with "
                         f"{len(existing or [cpu])} CPU device(s); run the trainer in its own process") from None


def _tpu_resolver(tpu: Optional[str]):
    """Resolves --tpu ('local' on TPU VMs, else a name or grpc:// address)."""
    if not tpu:
        raise UsageError("--strategy=tpu needs --tpu (a TPU name, a grpc:// address, or 'local' on TPU VMs); "
                         "--use_tpu=false runs the same path without a TPU")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if not resolver.num_accelerators().get("TPU"):
            raise RuntimeError("it has no TPU cores")
        return resolver
    except Exception as e:  # The resolver raises ValueError, NotFound, RuntimeError or HTTP errors.
        raise UsageError(f"--tpu={tpu}: no TPU could be resolved ({type(e).__name__}: {str(e)[:200]}); "
                         "--use_tpu=false runs the same path without a TPU") from None
