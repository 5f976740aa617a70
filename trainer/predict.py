"""Batch prediction with a trained model's serving SavedModel.

    python -m trainer.predict --model=MODEL --data=DATA --output=out.csv|out.jsonl [--top_k=3] [--batch_size=64]
        [--tta=none|flip|flip_crop]

MODEL: a model_dir, an export folder, a champion folder (or `--champion_dir=`), local or gs://.
DATA: a folder (searched recursively), a glob of image files, a TFRecord glob, or an .npz file.

Every input is run through the SavedModel's `serving_default` signature, the one an
endpoint serves: encoded image bytes for models trained on images (decoding and
resizing happen inside the model), float pixels for models trained on arrays. One
output row per input, in input order: `path` (or `index` for .npz), `predicted`,
`probability`, `top_k` (a JSON list of [class, probability]) and `error` (set, and
the others empty, for an input that could not be read or decoded). When every input
sits in a class folder named like one of the model's classes (or the .npz/TFRecords
carry labels), accuracy is printed and the confusion matrix is written next to the
output as `<output name>.confusion.csv`. The output is written under a temporary
name and renamed (uploaded, for gs://) only when complete. `--tta=flip|flip_crop` averages
each input's probabilities over its mirror (and central crops): 2 or 4 model calls per input.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainer.config import TTA_KINDS  # noqa: E402
from trainer.errors import ArgumentParser, UsageError  # noqa: E402
from trainer.outputs.predict_args import check_arguments  # noqa: E402


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m trainer.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model_dir, export folder, champion folder (local or gs://)")
    parser.add_argument("--champion_dir", default=None, help="predict with the current champion of this folder")
    parser.add_argument("--data", default=None, help="folder, file glob, TFRecord glob or .npz")
    parser.add_argument("--output", required=True, help="out.csv or out.jsonl (local or gs://)")
    parser.add_argument("--top_k", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_image_mb", type=int, default=64,
                        help="larger image files (and FIFOs, devices) are error rows, never read [64]")
    parser.add_argument("--tta", default="none", choices=TTA_KINDS, help="test-time augmentation: none, flip "
                        "(2 views) or flip_crop (4 views), probabilities averaged [none]")
    args = parser.parse_args(argv)
    try:
        if bool(args.model) == bool(args.champion_dir):
            raise UsageError("give one of --model and --champion_dir")
        check_arguments(args.data, args.output, args.top_k, args.batch_size, args.tta, args.max_image_mb)
        flag, model = ("model", args.model) if args.model else ("champion_dir", args.champion_dir)
        if "://" not in model and not os.path.exists(model):
            raise UsageError(f"--{flag}={model} does not exist")
        from trainer.outputs.batch_predict import run  # TensorFlow: after the arguments are checked.

        summary = run(args.model or args.champion_dir, args.data, args.output, args.top_k, args.batch_size,
                      max_image_mb=args.max_image_mb, tta_kind=args.tta)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except Exception as e:  # A full or read-only disk: one line.
        from trainer.errors import exit_on_disk_failure

        return exit_on_disk_failure(e, "it predicts every input again")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
