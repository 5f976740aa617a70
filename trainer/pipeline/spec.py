"""The retraining pipeline (Kubeflow Pipelines v2, as Vertex AI Pipelines runs it): train -> gate -> promote ->
register -> deploy, the last two behind parameters.

Each step is a lightweight Python component run in the trainer's image (`--image`, the Dockerfile's `keras`
target, which has kfp), calling trainer.pipeline.steps. A gate that keeps the champion is a successful run that
promotes nothing; a step that fails fails the run with its `error:` line as the step's error.
"""
import dataclasses

from kfp import dsl

DEFAULT_IMAGE = "us-central1-docker.pkg.dev/PROJECT/trainer/trainer:keras-cpu"
PIPELINE_NAME = "trainer-retrain"


def _train(data: str, model_dir: str, champion_dir: str, trainer_flags: list, run_id: str, job_name: str,
           metrics: dsl.Output[dsl.Metrics]) -> str:
    from trainer.pipeline import steps

    with steps.failing_cleanly():
        result = steps.train(data, model_dir, champion_dir, trainer_flags, run_id, job_name)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    return result["run_dir"]


def _gate(run_dir: str, metrics: dsl.Output[dsl.Metrics], record: dsl.Output[dsl.Artifact]) -> str:
    import json

    from trainer.pipeline import steps

    with steps.failing_cleanly():
        verdict = steps.gate(run_dir)
    for name, value in verdict["figures"].items():
        metrics.log_metric(name, value)
    metrics.metadata.update(decision=verdict["decision"], reason=verdict["reason"])
    record.metadata.update(decision=verdict["decision"], reason=verdict["reason"])
    with open(record.path, "w") as f:
        json.dump(verdict["record"], f, indent=1, sort_keys=True)
    return verdict["decision"]


def _promote(champion_dir: str, run_dir: str) -> str:
    from trainer.pipeline import steps

    with steps.failing_cleanly():
        return steps.promote(champion_dir, run_dir)


def _register(project: str, region: str, champion_dir: str, version: str, display_name: str, parent_model: str,
              serving_image: str, dry_run: bool) -> str:
    from trainer.pipeline import steps

    with steps.failing_cleanly():
        return steps.register(project, region, champion_dir, version, display_name, parent_model, serving_image,
                              dry_run)


def _deploy(model: str, endpoint: str, region: str, machine_type: str, dry_run: bool) -> str:
    from trainer.pipeline import steps

    with steps.failing_cleanly():
        return steps.deploy(model, endpoint, region, machine_type, dry_run)


@dataclasses.dataclass(frozen=True)
class TrainMachine:
    """What the train step asks Vertex AI Pipelines for (it picks a machine that fits); the other steps are small."""

    cpu: str = "8"
    memory: str = "32G"
    accelerator: str = ""  # e.g. NVIDIA_TESLA_T4 (then the image must be built with DEVICE=gpu).
    accelerator_count: int = 1


def build(image: str = DEFAULT_IMAGE, machine: TrainMachine = TrainMachine()):
    """The pipeline function, its components in `image`."""
    def component(func):
        return dsl.component(func=func, base_image=image, install_kfp_package=False)

    def task(op, name):  # Never cached: the same parameters next week mean a new training on new data.
        return op.set_display_name(name).set_caching_options(False)

    train, gate, promote, register, deploy = map(component, (_train, _gate, _promote, _register, _deploy))
    for task_name, op in (("train", train), ("gate", gate), ("promote", promote), ("register", register),
                          ("deploy", deploy)):
        op.component_spec.name = task_name

    @dsl.pipeline(name=PIPELINE_NAME, description="Retrain from the champion; promote only past the gate; "
                  "register with the serving container; deploy on request.")
    def retrain(data: str, champion_dir: str, model_dir: str, trainer_flags: list = [], run_id: str = "",
                register_model: bool = False, project: str = "", region: str = "us-central1",
                display_name: str = "", parent_model: str = "", serving_image: str = "", endpoint: str = "",
                machine_type: str = "n1-standard-4", dry_run_cloud: bool = False):
        trained = task(train(data=data, model_dir=model_dir, champion_dir=champion_dir, trainer_flags=trainer_flags,
                             run_id=run_id, job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), "train")
        trained.set_cpu_limit(machine.cpu).set_memory_limit(machine.memory)
        if machine.accelerator:
            trained.set_accelerator_type(machine.accelerator).set_accelerator_limit(machine.accelerator_count)
        gated = task(gate(run_dir=trained.outputs["Output"]), "evaluate and gate")
        with dsl.If(gated.outputs["Output"] == "promote", name="gate-passed"):
            promoted = task(promote(champion_dir=champion_dir, run_dir=trained.outputs["Output"]), "promote")
            with dsl.If(register_model == True, name="register-requested"):  # noqa: E712 (a KFP condition)
                with dsl.If(promoted.output != "", name="was-promoted"):
                    registered = task(register(project=project, region=region, champion_dir=champion_dir,
                                               version=promoted.output, display_name=display_name,
                                               parent_model=parent_model, serving_image=serving_image,
                                               dry_run=dry_run_cloud), "register")
                    with dsl.If(endpoint != "", name="deploy-requested"):
                        task(deploy(model=registered.output, endpoint=endpoint, region=region,
                                    machine_type=machine_type, dry_run=dry_run_cloud), "deploy")

    return retrain
