"""Training through bad TFRecords: corrupt, truncated or undecodable records are skipped, counted and named.

Nothing is scanned up front (at scale that would read every byte twice): training
runs on TensorFlow's fast reader, and only when a record turns out bad does
`train_skipping_bad_records` find every bad record once, record it, and resume
training from the latest checkpoint without them. Without that, a corrupt record
ends the job, and every restart (Vertex AI re-runs failed jobs) ends at the same
record again.

- A `DataLossError` (a corrupt or truncated record): every shard's framing and
  checksums are validated (`tfrecords.skip_corrupt`).
- An image that does not decode, or a record that is not a `tf.train.Example`: every
  record of every shard is parsed and decoded once, and the failures are skipped.

Both stop with one `UsageError` when more than `--max_bad_fraction` of the records
are bad, or when a shard cannot be read at all.
"""
import re
from typing import Callable, List, TypeVar

import tensorflow as tf
from absl import logging

from trainer.util import files
from trainer.data import tfrecords
from trainer.errors import UsageError

T = TypeVar("T")

# The ops whose InvalidArgumentError means "this record's bytes are bad", not a bug of ours.
_DECODE_FAILURE = re.compile(r"DecodeImage|DecodeJpeg|DecodePng|DecodeGif|DecodeBmp|ParseExample|"
                             r"ParseSingleExample|image file format|Invalid JPEG|Invalid PNG|Could not parse example")


def shards_of(dataset) -> List[str]:
    """Every TFRecord shard a loaded dataset reads (training and evaluation)."""
    if dataset is None:
        return []
    return sorted({s for split in (dataset.train, dataset.validation) for s in (split.shards or ())})


def skipped(dataset) -> List[dict]:
    """What run_info.json records as `skipped_records`."""
    return tfrecords.skipped(shards_of(dataset))


def restore(dataset, model_dir: str) -> List[dict]:
    """Bad records an earlier process of this run found (its run_info.json), skipped again; returns `skipped`.

    A restarted job (a preemption, Vertex AI re-running a failed job) then neither searches for them again
    nor loses them from its report, even when it does not meet them again.
    """
    shards = set(shards_of(dataset))
    if not shards:
        return []
    try:
        previous = files.read_run_info(model_dir) or {}
    except ValueError:  # An unreadable run_info.json: found again when met.
        previous = {}
    for entry in previous.get("skipped_records") or []:
        if isinstance(entry, dict) and entry.get("shard") in shards:
            tfrecords.remember(entry)
    return skipped(dataset)


_ON_SKIP = []  # Called once bad records are left out (the input order changed): trainer.outputs.metrics registers.


def on_skip(callback) -> None:
    """Registers `callback()` to run whenever training starts skipping newly found bad records."""
    if callback not in _ON_SKIP:
        _ON_SKIP.append(callback)


def train_skipping_bad_records(train: Callable[[], T], dataset, config) -> T:
    """Calls `train()`; when a bad record stops it, finds every bad record once and calls it again (it resumes).

    Each kind of fault is searched for at most once, so this ends: a fault met again after its
    search is a `UsageError` naming TensorFlow's message.
    """
    shards = shards_of(dataset)
    source = f"--data={config.data}" + (f" / --eval_data={config.eval_data}" if config.eval_data else "")
    max_bad_fraction = config.max_bad_fraction
    searched = set()
    while True:
        try:
            return train()
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            kind = "framing" if isinstance(e, tf.errors.DataLossError) else "decoding"
            if not shards or (kind == "decoding" and not _DECODE_FAILURE.search(e.message or "")):
                raise
            if kind in searched:
                raise UsageError(f"{source}: a record is still unreadable after skipping the bad ones found "
                                 f"({type(e).__name__}: {_first_line(e)})") from None
            searched.add(kind)
            logging.warning("a bad record stopped training (%s: %s); finding every bad record, then resuming "
                            "from the latest checkpoint", type(e).__name__, _first_line(e))
            found = (tfrecords.skip_corrupt if kind == "framing" else skip_undecodable)(
                shards, source, max_bad_fraction)
            if not found:  # Not a record of ours (a damaged checkpoint, say): TensorFlow's error stands.
                raise
            # Shards with faults are read in another order from now on: per-example results of earlier
            # evaluations no longer line up with the evaluation input (the report would mislabel images).
            for callback in _ON_SKIP:
                callback()


def skip_undecodable(shards: List[str], source: str, max_bad_fraction: float) -> List[dict]:
    """Parses and decodes every record once; records that fail are left out of `tfrecords.records` from now on."""
    try:
        found = {path: _undecodable(path) for path in shards}
    except tf.errors.DataLossError:  # A framing fault too: find those first, then decode around them.
        tfrecords.skip_corrupt(shards, source, max_bad_fraction)
        found = {path: _undecodable(path) for path in shards}
    total = sum(n for n, _ in found.values())
    bad = [(path, i) for path, (_, indices) in found.items() for i in indices]
    already = len(tfrecords.skipped(shards))
    if bad and len(bad) + already > max_bad_fraction * total:
        first = ", ".join(f"{p} record {i}" for p, i in bad[:3])
        raise UsageError(f"{source}: {len(bad) + already} of {total} records are corrupt or undecodable, more "
                         f"than --max_bad_fraction={max_bad_fraction}; first: {first}")
    for path, (_, indices) in found.items():
        if indices:
            tfrecords.skip_records(path, {i: "image bytes do not decode (or not a tf.train.Example)"
                                          for i in indices})
    if bad:
        logging.warning("skipping %d record(s) of %d whose image does not decode: %s%s", len(bad), total,
                        ", ".join(f"{p} record {i}" for p, i in bad[:5]), ", ..." if len(bad) > 5 else "")
    bad = set(bad)
    return [entry for entry in tfrecords.skipped(shards) if (entry["shard"], entry["index"]) in bad]


def _undecodable(path: str):
    """(records in the shard, indices of those that do not parse or decode), in one parallel pass."""
    indexed = tfrecords.indexed_records(path)

    def probe(index, record):
        encoded, _ = tfrecords.parse(record)
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)  # As inputs.decode_image does.
        return index, tf.shape(image)[0]

    every = set(indexed.map(lambda index, record: index).as_numpy_iterator())
    good = {i for i, height in indexed.map(probe, num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors().as_numpy_iterator() if height > 0}
    return len(every), sorted(every - good)


def _first_line(e: tf.errors.OpError) -> str:
    """The line of TensorFlow's message that says what went wrong (graph errors wrap it in context lines)."""
    for line in (e.message or "").splitlines():
        line = re.sub(r"^\{\{[^}]*\}\}\s*", "", line.strip())  # The op's function name, in braces.
        if line and not re.match(r"Graph execution error|Detected at node|\[\[|File |\(\d+\) |Node: ", line):
            return line[:200]
    return type(e).__name__
