"""report.html: one self-contained page about a run, to look at rather than read.

    python -m trainer.report MODEL_DIR [--output=FILE]

Written into the model_dir at the end of every run (and resume); on demand for any
run, finished, running or killed, local or gs://. Contents: the run (data, classes,
model, flags that differ from the defaults, strategy, TF version, duration, phases),
curves from the event files, the confusion matrix, per-class precision/recall/F1,
the worst-misclassified validation images, and the promotion decision. The numbers
that eval_metrics.json lacks are computed from the run's model (keras_model.h5, or
its latest checkpoint) on the evaluation split. Charts are inline SVG, thumbnails
inline PNG: the file needs no network and prints.
"""
import logging
import os
import sys

from trainer.errors import ArgumentParser
from trainer.outputs.report import REPORT_NAME, build


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m trainer.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="the run's --model_dir (local or gs://)")
    parser.add_argument("--output", help=f"where to write (default MODEL_DIR/{REPORT_NAME})")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import logging as absl_logging

    from trainer.errors import UsageError

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # Deprecation notices of the event reader.
    try:
        if args.output:
            from trainer.util import files

            files.check_output_file(args.output)
        path = build(args.model_dir.rstrip("/"), args.output)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except Exception as e:  # A full or read-only disk: one line.
        from trainer.errors import exit_on_disk_failure

        return exit_on_disk_failure(e, "it writes the report again")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
