"""Submit the trainer as a Vertex AI custom job.

    python scripts/submit_vertex.py --project=P --region=R --bucket=gs://B [options] -- <trainer flags>

Builds the sdist, uploads it to gs://B/packages/<tag>/ with google-cloud-storage,
and creates a CustomJob (google-cloud-aiplatform): the python package on a prebuilt
TF 2.15 image, or --image_uri for a custom container. Worker pools follow Vertex's
order (0 chief, 1 workers, 2 parameter servers, 3 evaluator); the job's
baseOutputDirectory is a timestamped folder under gs://B/runs/. --dry_run contacts
nothing: it prints the CustomJob as JSON on stdout (logs go to stderr) and exits 0.
"""
import argparse
import dataclasses
import glob
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.cloud import vertex  # noqa: E402
from trainer.errors import UsageError  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(prog="submit_vertex.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True, help="gs://BUCKET[/prefix] for the package and run outputs")
    parser.add_argument("--display_name", default=None)
    parser.add_argument("--machine_type", default="n1-standard-8")
    parser.add_argument("--accelerator_type", default=None, help="e.g. NVIDIA_TESLA_T4")
    parser.add_argument("--accelerator_count", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="replicas in pool 1, besides the chief")
    parser.add_argument("--parameter_servers", type=int, default=0)
    parser.add_argument("--evaluator", action="store_true")
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--image_uri", default=None, help="custom container (see Dockerfile)")
    images.add_argument("--executor_image_uri", default=None, help="prebuilt image for the python package")
    parser.add_argument("--engine", choices=("estimator", "keras"), default=None,
                        help="keras: the Keras engine on TensorFlow 2.21, in the Dockerfile's keras image "
                        "(docker build --target keras); needs --image_uri. Passed to the trainer as --engine.")
    parser.add_argument("--service_account", default=None)
    parser.add_argument("--package_uri", default=None, help="an already uploaded sdist (skips build and upload)")
    parser.add_argument("--package_tag", default=None, help="folder under gs://B/packages/ [timestamp]")
    parser.add_argument("--spot", action="store_true", help="run on Spot capacity (cheaper, preemptible: the trainer "
                        "saves a checkpoint on SIGTERM and the restarted task resumes from it)")
    parser.add_argument("--restart_on_worker_restart", nargs="?", const="true", default=None, choices=("true", "false"),
                        help="restart every task when one restarts [true with --spot, else false]")
    parser.add_argument("--timeout", default=None, help="stop the job after this long: 3600, 90m, 24h, 7d "
                        "[Vertex's default]")
    parser.add_argument("--tensorboard", default=None, help="projects/P/locations/L/tensorboards/ID: a Vertex AI "
                        "TensorBoard that shows the run live (needs --service_account)")
    parser.add_argument("--dry_run", action="store_true", help="print the CustomJob JSON; contact nothing")
    parser.add_argument("trainer_args", nargs="*", help="trainer flags, after --")
    return parser.parse_args(argv)


def build_sdist(out_dir: str) -> str:
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", out_dir], cwd=REPO, check=True,
                   stdout=sys.stderr)
    (path,) = glob.glob(os.path.join(out_dir, "trainer-*.tar.gz"))
    return path


def check_trainer_args(trainer_args) -> None:
    """Parses and validates the trainer flags as the job would, so mistakes show now, not an hour later."""
    from trainer import task  # Defines the trainer's flags (absl only; no TensorFlow import).

    task.check_flags(trainer_args)


def main(argv=None) -> int:
    args = parse(argv)
    if args.engine:
        if args.engine == "keras" and not args.image_uri:
            sys.stderr.write("error: --engine=keras runs TensorFlow 2.21, which no prebuilt Vertex AI training image "
                             "has: build the Dockerfile's keras image (docker build --target keras -t IMAGE .), push "
                             "it and pass --image_uri=IMAGE\n")
            return 1
        if any(a.startswith("--engine") for a in args.trainer_args):
            sys.stderr.write("error: give --engine once: before the -- (for the job) or after it, not both\n")
            return 1
        args.trainer_args = [*args.trainer_args, f"--engine={args.engine}"]
    tag = args.package_tag or time.strftime("%Y%m%d-%H%M%S")
    request = vertex.JobRequest(
        project=args.project, region=args.region, bucket=args.bucket, trainer_args=tuple(args.trainer_args),
        display_name=args.display_name, machine_type=args.machine_type, accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count, workers=args.workers, parameter_servers=args.parameter_servers,
        evaluator=args.evaluator, image_uri=args.image_uri, executor_image_uri=args.executor_image_uri,
        service_account=args.service_account, package_uri=args.package_uri, spot=args.spot,
        restart_on_worker_restart=None if args.restart_on_worker_restart is None
        else args.restart_on_worker_restart == "true", tensorboard=args.tensorboard)
    try:
        if args.timeout is not None:
            request = dataclasses.replace(request, timeout_secs=vertex.parse_duration(args.timeout))
        request = vertex.validate(request)
        check_trainer_args(args.trainer_args)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if not request.image_uri and not request.package_uri:
        package_uri = f"{args.bucket.rstrip('/')}/packages/{tag}/trainer-0.1.0.tar.gz"
        if not args.dry_run:
            from trainer.cloud import gcs

            with tempfile.TemporaryDirectory() as tmp:
                sdist = build_sdist(tmp)
                package_uri = f"{args.bucket.rstrip('/')}/packages/{tag}/{os.path.basename(sdist)}"
                gcs.upload(sdist, package_uri)
            sys.stderr.write(f"uploaded {package_uri}\n")
        request = dataclasses.replace(request, package_uri=package_uri)
    if request.executor_image_uri and "2-15" in request.executor_image_uri:
        sys.stderr.write("note: Google lists the TF 2.15 prebuilt training images as past end of availability "
                         "(2025-11-14); prefer --image_uri with the Dockerfile's image\n")
    board = vertex.TENSORBOARD_NAME.fullmatch(request.tensorboard or "")
    if board and board.group(2) != args.region:
        sys.stderr.write(f"note: the TensorBoard is in {board.group(2)} and the job in {args.region}; Vertex AI may "
                         "refuse a TensorBoard outside the job's region\n")
    output_dir = vertex.output_directory(request)
    job = vertex.build_custom_job(request, output_dir)
    if args.dry_run:
        print(type(job).to_json(job, use_integers_for_enums=False))
        return 0
    from google.cloud import aiplatform_v1

    client = aiplatform_v1.JobServiceClient(client_options={"api_endpoint": f"{args.region}-aiplatform.googleapis.com"})
    created = client.create_custom_job(parent=f"projects/{args.project}/locations/{args.region}", custom_job=job)
    sys.stderr.write(f"created {created.name}\noutputs: {output_dir}\n")
    print(created.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
