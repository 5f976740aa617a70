"""The retraining pipeline on Vertex AI Pipelines: compile it, run it once, or put it on a schedule.

    python -m trainer.pipeline compile --output=retrain.yaml --image=IMAGE
    python -m trainer.pipeline submit --project=P --region=R --bucket=gs://B --image=IMAGE|--pipeline=FILE [--dry_run] \\
        -- --data=gs://B/train-* --champion_dir=gs://B/champions/NAME [--model_dir=gs://B/retrain] [trainer flags]
    python -m trainer.pipeline schedule ... --cron='0 3 * * 1' [--time_zone=Europe/Paris] -- <trainer flags>
    python -m trainer.pipeline local --pipeline_root=DIR [--run_id=ID] -- --data=... --champion_dir=DIR --model_dir=DIR

Steps: train (warm-started from the champion, gated with --promote=false) -> evaluate and gate -> promote
(CHAMPION.json) -> register (with --register: a Model Registry version served by --serving_image) -> deploy (with
--endpoint). --image is the trainer's image (docker build --target keras), which every step runs in. --dry_run
prints the request as JSON and contacts nothing. `local` runs the same pipeline on this machine with kfp.local
(each step a subprocess of this Python, no cluster, no Docker); the same --run_id again resumes its training.
"""
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import warnings

from trainer.errors import ArgumentParser, UsageError


def parse(argv):
    parser = ArgumentParser(prog="python -m trainer.pipeline", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    compile_ = commands.add_parser("compile", help="write the pipeline spec (YAML)")
    compile_.add_argument("--output", required=True, help="the spec file to write, e.g. retrain.yaml")
    for name in ("submit", "schedule"):
        command = commands.add_parser(name, help="run once" if name == "submit" else "run on a cron schedule")
        command.add_argument("--project", required=True)
        command.add_argument("--region", required=True)
        command.add_argument("--bucket", required=True, help="gs://BUCKET[/prefix]: the pipeline root")
        command.add_argument("--pipeline", default=None, help="a compiled spec [compiled now]")
        command.add_argument("--display_name", default="trainer-retrain")
        command.add_argument("--service_account", default=None)
        command.add_argument("--run_id", default="", help="the run's folder under model_dir [the pipeline job name]")
        command.add_argument("--register", action="store_true",
                             help="register each promoted champion (with --serving_image)")
        command.add_argument("--serving_image", default="", help="the serving container (docker build --target serve)")
        command.add_argument("--parent_model", default="", help="register as versions of this model (id or name)")
        command.add_argument("--endpoint", default="", help="deploy each registered champion to this endpoint id")
        command.add_argument("--machine_type", default="n1-standard-4", help="the endpoint's machine type")
        command.add_argument("--dry_run", action="store_true", help="print the request; contact nothing")
        if name == "schedule":
            command.add_argument("--cron", required=True, help="minute hour day month weekday, e.g. '0 3 * * 1'")
            command.add_argument("--time_zone", default="UTC")
        command.add_argument("trainer_args", nargs="*", help="the trainer's flags, after --")
    for name in ("compile", "submit", "schedule"):
        command = commands.choices[name]
        command.add_argument("--train_cpu", default="8", help="the train step's CPUs [8]")
        command.add_argument("--train_memory", default="32G", help="the train step's memory [32G]")
        command.add_argument("--train_accelerator", default="", help="e.g. NVIDIA_TESLA_T4 (a GPU image) [none]")
        command.add_argument("--train_accelerator_count", type=int, default=1)
    local = commands.add_parser("local", help="run the pipeline here with kfp.local")
    local.add_argument("--pipeline_root", required=True, help="where kfp.local keeps each step's outputs")
    local.add_argument("--run_id", default="", help="the run's folder under model_dir [the pipeline job name]")
    local.add_argument("--register", action="store_true", help="register (as a dry run: nothing leaves here)")
    local.add_argument("--serving_image", default="")
    local.add_argument("--endpoint", default="", help="deploy (as a dry run)")
    local.add_argument("--project", default="local")
    local.add_argument("--region", default="us-central1")
    local.add_argument("trainer_args", nargs="*", help="the trainer's flags, after --")
    for command in commands.choices.values():
        command.add_argument("--image", default=None, help="the trainer's image every step runs in")
    return parser.parse_args(argv)


def compile_spec(output: str, args) -> str:
    from kfp import compiler

    from trainer.pipeline import spec

    if not args.image:
        raise UsageError("--image is required: the trainer's image every step runs in (docker build --target "
                         "keras, pushed to Artifact Registry)")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise UsageError(f"--output={output}: the folder {folder} does not exist")
    machine = spec.TrainMachine(args.train_cpu, args.train_memory, args.train_accelerator,
                                args.train_accelerator_count)
    compiler.Compiler().compile(spec.build(args.image, machine), output)
    return output


def main(argv=None) -> int:
    args = parse(argv)
    try:
        try:
            importlib.import_module("kfp")
        except ImportError:
            raise UsageError("the pipeline needs kfp: pip install 'trainer[pipeline]' (in .venv-keras already)") \
                from None
        if args.command == "compile":
            compile_spec(args.output, args)
            sys.stderr.write(f"compiled: {args.output}\n")
            return 0
        if args.command == "local":
            return _local(args)
        return _submit(args)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1


def _local(args) -> int:
    """kfp.local's SubprocessRunner in this interpreter; one `error:` line naming the step that failed. SIGTERM or
    SIGINT (Ctrl-C) stops the step that runs (a training saves its checkpoint) and ends with 143 or 130 and the
    command that resumes."""
    from kfp import local

    from trainer import task
    from trainer.pipeline import spec, steps, vertex

    parameters = vertex.split_trainer_flags(args.trainer_args)
    for name in ("data", "champion_dir", "model_dir"):
        if not parameters.get(name):
            raise UsageError(f"the trainer flags after -- need --{name}")
    task.check_flags([f"--data={parameters['data']}", f"--champion_dir={parameters['champion_dir']}",
                      *parameters["trainer_flags"]])
    absolute = {k: v if "://" in v or k == "data" and not os.path.exists(v) else os.path.abspath(v)
                for k, v in parameters.items() if k in ("data", "champion_dir", "model_dir")}
    run_id = args.run_id or time.strftime("local-%Y%m%d-%H%M%S", time.gmtime())
    parameters.update(absolute, run_id=run_id, register_model=args.register, project=args.project,
                      region=args.region, serving_image=args.serving_image, endpoint=args.endpoint,
                      dry_run_cloud=True)
    resume = f"--run_id={run_id}" if not args.run_id else "the same command"
    sys.stderr.write(f"pipeline: run {run_id}: {absolute['model_dir']}/{run_id}\n")
    # kfp.local's notes that the steps' image is not used here and that display names are ignored: both expected.
    warnings.filterwarnings("ignore", message=".*(non-Python base image|have no effect in the current local)")
    os.makedirs(args.pipeline_root, exist_ok=True)
    errors = os.path.join(os.path.abspath(args.pipeline_root), f"errors-{os.getpid()}.log")
    os.environ[steps.ERRORS_ENV] = errors
    stopped = []

    def stop(number, _frame):  # To the step's processes (the trainer saves a checkpoint), then the pipeline ends.
        stopped.append(number)
        _signal_descendants(number)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=os.path.abspath(args.pipeline_root),
                   raise_on_error=False)
        outcome = spec.build(args.image or spec.DEFAULT_IMAGE)(**parameters)  # The image is not used here.
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        name = signal.Signals(stopped[0]).name
        again = f"run the same command with {resume}" if not args.run_id else "run the same command"
        sys.stderr.write(f"pipeline: stopped by {name}; {again} to resume run {run_id}\n")
        return 128 + stopped[0]
    failed = open(errors).read().splitlines() if os.path.exists(errors) else []
    if failed:
        sys.stderr.write(f"{failed[-1]}\n")
        return 1
    if outcome is None:
        sys.stderr.write("error: the pipeline failed (its steps' console is above)\n")
        return 1
    return 0


def _signal_descendants(number: int) -> None:
    """Sends the signal to this process's descendants: the trainer alone when one runs (its own handler saves a
    checkpoint and exits), else every step process."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)

    def command(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    trainers = [pid for pid in found if "trainer.task" in command(pid) and "executor_main" not in command(pid)]
    for pid in trainers or found:
        try:
            os.kill(pid, number)
        except OSError:
            pass


def _submit(args) -> int:
    import yaml

    from trainer import task
    from trainer.pipeline import vertex

    parameters = vertex.split_trainer_flags(args.trainer_args)
    vertex.check(args.project, args.region, args.bucket, parameters, getattr(args, "cron", None),
                 getattr(args, "time_zone", "UTC"))
    task.check_flags([f"--data={parameters['data']}", f"--champion_dir={parameters['champion_dir']}",
                      *parameters["trainer_flags"]])
    if args.register and not args.serving_image:
        raise UsageError("--register needs --serving_image (docker build --target serve): the pipeline trains on "
                         "TensorFlow 2.21, which the prebuilt TF 2.15 images cannot serve")
    if args.command == "schedule" and args.run_id:
        raise UsageError("--run_id names one run's folder: a schedule's runs each train in their own (the job name)")
    if args.endpoint and not args.register:
        raise UsageError("--endpoint deploys what --register registers: give --register too")
    parameters.setdefault("model_dir", f"{args.bucket.rstrip('/')}/retrain")
    parameters.update(run_id=args.run_id, register_model=args.register, project=args.project, region=args.region,
                      display_name=args.display_name, parent_model=args.parent_model,
                      serving_image=args.serving_image, endpoint=args.endpoint, machine_type=args.machine_type)
    path = args.pipeline
    if path is None:
        path = compile_spec(os.path.join(tempfile.mkdtemp(prefix="pipeline-"), "retrain.yaml"), args)
    elif args.image:
        raise UsageError("--image applies when the pipeline is compiled now; --pipeline names a compiled spec")
    if not os.path.isfile(path):
        raise UsageError(f"--pipeline={path} does not exist (python -m trainer.pipeline compile --output={path})")
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
        known = set(spec["root"]["inputDefinitions"]["parameters"])
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise UsageError(f"--pipeline={path} is not a compiled pipeline spec ({type(e).__name__})") from None
    from trainer.pipeline.spec import DEFAULT_IMAGE

    if DEFAULT_IMAGE in json.dumps(spec):
        raise UsageError(f"--pipeline={path} names the placeholder image {DEFAULT_IMAGE}: compile it with --image")
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise UsageError(f"--pipeline={path} has no parameter {', '.join(unknown)}: compile it again")
    submission = vertex.Submission(args.project, args.region, args.bucket, spec, parameters, args.display_name,
                                   args.service_account, getattr(args, "cron", None), getattr(args, "time_zone", "UTC"))
    request = vertex.schedule_request(submission) if args.command == "schedule" else vertex.run_request(submission)
    if args.dry_run:
        print(type(request).to_json(request))
        return 0
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError

    try:
        name = vertex.send(submission, request)
    except (exceptions.GoogleAPIError, DefaultCredentialsError) as e:
        raise UsageError(f"{args.command}: the request to Vertex AI failed: {type(e).__name__}: {str(e)[:300]}")
    print(json.dumps({"name": name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
