"""TensorFlow Lite export of a trained run: `<model_dir>/export/tflite/`.

    python -m trainer.export_tflite MODEL_DIR --quantize=float32|float16|int8 [--data=...]

(or `--export_tflite=...` at the end of a training run). From the run's
`keras_model.h5` (the architecture, preprocessing inside) with the weights of the
run's serving SavedModel (with --export=best an earlier checkpoint than the final
one keras_model.h5 holds), it writes:

    model.tflite     takes decoded RGB pixels [1, size, size, 3] in [0, 255], returns class probabilities
    labels.txt       one class a line, in output order
    model_info.json  input/output shape, dtype, range and quantization parameters, size, sha256, the
                     weights' source, and the top-1 agreement with the float Keras model on the run's
                     evaluation split

`float16` stores float16 weights (float32 in and out); `int8` is full-integer
quantization calibrated on training images of the run (a seeded sample, taken
through the training input pipeline without augmentation): uint8 pixels in,
uint8 probabilities out, their scale and zero point in model_info.json.
Each file is written under a temporary name and renamed, model_info.json last
(it carries the sha256 of model.tflite); rerunning the same command redoes the
export, so a killed export is finished by running it again.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402

from trainer.config import TFLITE_CALIBRATION_EXAMPLES as CALIBRATION_EXAMPLES  # noqa: E402
from trainer.config import TFLITE_CHECK_EXAMPLES as CHECK_EXAMPLES  # noqa: E402
from trainer.config import TFLITE_MODES  # noqa: E402
from trainer.errors import ArgumentParser, UsageError  # noqa: E402

# TensorFlow (3 s to import) comes after the arguments are checked: a mistake is one line at once.
MODES = TFLITE_MODES[1:]


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m trainer.export_tflite", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a finished run's --model_dir (keras_model.h5, run_info.json)")
    parser.add_argument("--quantize", default="float32", help=f"one of: {', '.join(MODES)} [float32]")
    parser.add_argument("--data", default=None, help="the training data, if no longer where run_info.json says")
    parser.add_argument("--calibration_examples", type=int, default=CALIBRATION_EXAMPLES)
    parser.add_argument("--check_examples", type=int, default=CHECK_EXAMPLES,
                        help="evaluation images for the agreement check (0: skip it)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    try:
        _check(args)
        from trainer.outputs.tflite import export, tflite_dir

        info = export(args.model_dir, args.quantize, args.data, args.calibration_examples, args.check_examples)
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except Exception as e:  # A full or read-only disk: one line.
        from trainer.errors import exit_on_disk_failure

        return exit_on_disk_failure(e, "it converts the model again")
    print(json.dumps({"model": os.path.join(tflite_dir(args.model_dir), "model.tflite"), "bytes": info["bytes"],
                      "quantize": info["quantize"],
                      "agreement": info.get("agreement_with_keras_model", {}).get("top1")}, sort_keys=True))
    return 0


def _check(args) -> None:
    """The mistakes found without TensorFlow: bad values, a local model_dir that holds no finished run."""
    if args.quantize not in MODES:
        raise UsageError(f"--quantize={args.quantize} is not valid; choose one of: {', '.join(MODES)}")
    if args.calibration_examples < 1 or args.check_examples < 0:
        raise UsageError("--calibration_examples must be >= 1 and --check_examples >= 0")
    local = "://" not in args.model_dir
    if local and not all(os.path.exists(os.path.join(args.model_dir, name))
                         for name in ("keras_model.h5", "run_info.json")):
        raise UsageError(f"{args.model_dir} holds no finished run (keras_model.h5 and run_info.json); train it first")


if __name__ == "__main__":
    sys.exit(main())
