"""Reproduces the tf.data iterator stall of issue 15 without the trainer (see README "Performance").

    python scripts/tfdata_close_stall.py [--alive=45] [--autotune=1] [--runs=3]

Each run (a fresh process) reads a small tf.data pipeline in a graph-mode Session
for --alive seconds, then times `Session.close()`. With the autotuner on (TF's
default), the close waits for the autotuner thread's sleep in about half of the
runs (37 s after 45 s alive, on TF 2.15); with --autotune=0 it takes milliseconds.
While a close hangs, `gdb -p PID -batch -ex "thread apply all bt"` shows the main
thread in `RootDataset::Iterator::~Iterator` and one thread in
`Model::OptimizeLoop`.
"""
import argparse
import os
import subprocess
import sys
import time


def one_run(alive: float, autotune: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    ds = tf.data.Dataset.range(1 << 30).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(4).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    batch = tf.compat.v1.data.make_one_shot_iterator(ds.with_options(options)).get_next()
    session = tf.compat.v1.Session()
    start = time.time()
    while time.time() - start < alive:
        session.run(batch)
        time.sleep(0.01)  # Keeps the CPU mostly idle: the stall is about time, not load.
    start = time.time()
    session.close()
    print(f"autotune={int(autotune)} alive={alive:.0f}s close={time.time() - start:.3f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alive", type=float, default=45)
    parser.add_argument("--autotune", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.alive, bool(args.autotune))
        return
    for _ in range(args.runs):
        subprocess.run([sys.executable, __file__, "--one", f"--alive={args.alive}", f"--autotune={args.autotune}"],
                       check=True)


if __name__ == "__main__":
    main()
