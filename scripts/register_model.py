"""Register a trained SavedModel in the Vertex AI Model Registry.

    python scripts/register_model.py --project=P --region=R --artifact_uri=gs://B/.../<version>/model \
        --display_name=NAME [--parent_model=ID] [--version_aliases=champion,...] [--labels=k=v,...] \
        [--serving_image=IMAGE] [--description=TEXT] [--dry_run]

Uploads the SavedModel under --artifact_uri (an export version folder or a champion
version's model/ folder) as a Model served by --serving_image (the trainer's serving
container, `docker build --target serve`: TensorFlow 2.21, both engines' exports) or,
without it, by the prebuilt TF 2.15 CPU prediction container (TF 2.15 SavedModels only;
Vertex AI retires it on 2027-01-14), as a new version of --parent_model when given.
The run's metrics, found next to the SavedModel, go into the description.
--dry_run contacts nothing: it prints the Model as JSON on stdout (the API's own
form: google.cloud.aiplatform_v1.Model.from_json parses it) and, on stderr, the
request it would send. Without --dry_run the URI must be gs:// and is checked for
saved_model.pb before anything is uploaded.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.retrain import registry
from trainer.errors import UsageError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"error: {message}\n")
        sys.exit(1)


def parse(argv):
    parser = _Parser(prog="register_model.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--artifact_uri", required=True, help="the SavedModel folder (gs://; local with --dry_run)")
    parser.add_argument("--display_name", required=True)
    parser.add_argument("--parent_model", default=None, help="upload as a new version of this model (id or name)")
    parser.add_argument("--version_aliases", default="", help="comma list, e.g. champion,production")
    parser.add_argument("--labels", default="", help="comma list of key=value")
    parser.add_argument("--serving_image", "--serving_image_uri", dest="serving_image_uri", default=None,
                        help="the serving container's URI (docker build --target serve) "
                             f"[{registry.PREBUILT_TF_CPU_SERVING}]")
    parser.add_argument("--description", default=None, help="[the artifact and its evaluation metrics]")
    parser.add_argument("--dry_run", action="store_true", help="print the Model JSON and the request; contact nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        request = registry.Registration(
            project=args.project, region=args.region, artifact_uri=args.artifact_uri,
            display_name=args.display_name, parent_model=args.parent_model,
            version_aliases=registry.split_list(args.version_aliases), labels=registry.parse_labels(args.labels),
            serving_image_uri=args.serving_image_uri, description=args.description, dry_run=args.dry_run)
        print(registry.register(request))
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
