"""Exports a finished run to TFLite in each mode and measures it against the serving SavedModel.

    python scripts/measure_tflite.py MODEL_DIR [--modes=float32,float16,int8] [--calibration_examples=300]

For every mode: `trainer.export_tflite.export`, then the top-1 agreement between
`tf.lite.Interpreter` and the SavedModel's `serving_default` on the run's whole
evaluation split (image files or arrays), the .tflite size and the interpreter's
time per image. Prints a Markdown table (the README's numbers come from it). The
last mode's export stays in <model_dir>/export/tflite/.
"""
import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.outputs import batch_predict as predict  # noqa: E402
from trainer.outputs import tflite as export_tflite  # noqa: E402
from trainer.util import files
from trainer.data import inputs
from trainer.model import model_source


def evaluation_set(model_dir: str, serving: predict.Serving, size: int):
    """(SavedModel probabilities, float pixels for TFLite) over the run's evaluation split."""
    run_info = files.read_json(os.path.join(model_dir, "run_info.json"))
    split = export_tflite._dataset(run_info, None, needed=True).validation
    if split.paths is not None:
        encoded = [open(p, "rb").read() for p in split.paths]
        reference = np.concatenate([serving(encoded[i:i + 64]) for i in range(0, len(encoded), 64)])
        pixels = np.stack([inputs.decode_image(b, size).numpy() for b in encoded])
    elif split.x is not None:
        pixels = inputs.to_model_images(tf.constant(split.x["x"]), size).numpy()
        reference = np.concatenate([serving(pixels[i:i + 256]) for i in range(0, len(pixels), 256)])
    else:
        raise SystemExit("error: only folder and array evaluation splits are measured here")
    return reference, pixels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--modes", default=",".join(export_tflite.MODES))
    parser.add_argument("--calibration_examples", type=int, default=export_tflite.CALIBRATION_EXAMPLES)
    args = parser.parse_args(argv)
    serving = predict.Serving(model_source.resolve(args.model_dir))
    size = int(tf.keras.models.load_model(os.path.join(args.model_dir, "keras_model.h5"),
                                          compile=False).input_shape[1])
    reference, pixels = evaluation_set(args.model_dir, serving, size)
    saved_model = model_source.resolve(args.model_dir)
    sm_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(saved_model) for f in fs)
    print(f"SavedModel: {sm_bytes} bytes; evaluation split: {len(pixels)} images at {size}x{size}")
    print("| mode | model.tflite bytes | top-1 agreement with the SavedModel | images | ms/image (interpreter) |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        info = export_tflite.export(args.model_dir, mode, calibration_examples=args.calibration_examples,
                                    check_examples=0)
        runner = export_tflite.Runner(open(os.path.join(export_tflite.tflite_dir(args.model_dir), "model.tflite"),
                                           "rb").read())
        started = time.time()
        lite = np.array([runner(p).argmax() for p in pixels])
        ms = 1000 * (time.time() - started) / len(pixels)
        agreement = float(np.mean(lite == reference.argmax(-1)))
        print(f"| {mode} | {info['bytes']:,} | {agreement:.4f} | {len(pixels)} | {ms:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
