"""The TFRecord image schema: writing examples, reading and splitting shards.

Schema (the common one for image classification):
  image/encoded      bytes   JPEG or PNG
  image/class/label  int64   class id
  image/class/text   bytes   class name (optional)

A TFRecord source without a separate `--eval_data` is split per record by a
fingerprint of `<shard file name>:<record index>`, so a record's split never
depends on the machine or on the other shards.

Corrupt records. TensorFlow's reader stops a shard at the first corrupt or
truncated record with a `DataLossError` (and would stop there again on every
restart). When that happens, `skip_corrupt` scans the shards once, validating
every record's framing and checksums as TensorFlow does, and remembers the faults
(per process, in `_FAULTS`; `remember` restores them after a restart); from then on `records` reads a shard with known
faults through a reader that skips them and resynchronizes after them, while
clean shards keep TensorFlow's fast reader. `skip_records` does the same for
records found undecodable later (`trainer.data.record_faults`); `skipped` reports all
of them (shard, byte offset, record index, reason).
"""
import dataclasses
import os
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

from trainer.errors import UsageError

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
_BUCKETS = 1_000_000


def encode_example(image_bytes: bytes, label: int, text: str = "") -> bytes:
    """One serialized tf.train.Example in the schema above."""
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    if text:
        feature["image/class/text"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(record, vocabulary: Optional[Sequence[str]] = None):
    """Serialized example -> (encoded image, label).

    With a vocabulary, a record's class text (when present) is looked up in it; a text
    the vocabulary lacks gives label -1, which the pipeline drops.
    """
    ex = tf.io.parse_single_example(record, _FEATURES)
    label = ex["image/class/label"]
    if vocabulary:
        matches = tf.equal(tf.constant(list(vocabulary)), ex["image/class/text"])
        by_text = tf.where(tf.reduce_any(matches), tf.argmax(tf.cast(matches, tf.int64)), tf.constant(-1, tf.int64))
        label = tf.where(tf.equal(ex["image/class/text"], ""), label, by_text)
    return ex["image/encoded"], label


def parse_label_and_text(record):
    ex = tf.io.parse_single_example(record, {k: v for k, v in _FEATURES.items() if k != "image/encoded"})
    return ex["image/class/label"], ex["image/class/text"]


def records(shards: List[str], part: str = "all", fraction: float = 0.0, deterministic: bool = True,
            input_context=None) -> tf.data.Dataset:
    """Serialized records of `part` ('all', 'train' or 'validation'), shards read in parallel.

    Records known to be corrupt or undecodable (`skip_corrupt`, `skip_records`) are left out.
    """
    if input_context is not None and input_context.num_input_pipelines > 1:
        shards = shards[input_context.input_pipeline_id::input_context.num_input_pipelines]
    threshold = int(fraction * _BUCKETS)

    def keep(path, indexed):
        if part == "all":
            return indexed.map(lambda i, r: r)
        name = tf.strings.split(path, "/")[-1]

        def in_validation(i, _):
            key = tf.strings.join([name, tf.strings.as_string(i)], ":")
            return tf.strings.to_hash_bucket_fast(key, _BUCKETS) < threshold

        wanted = in_validation if part == "validation" else (lambda i, r: tf.logical_not(in_validation(i, r)))
        return indexed.filter(wanted).map(lambda i, r: r)

    clean = [s for s in shards if s not in _FAULTS]
    faulty = [s for s in shards if s in _FAULTS]
    parts = [tf.data.Dataset.from_tensor_slices(group).interleave(
        lambda path, read=read: keep(path, read(path)), cycle_length=min(len(group), 8),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        for group, read in ((clean, _fast_indexed), (faulty, _skipping_indexed)) if group]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    # Mixed in proportion to their shard counts, so that a shuffle buffer sees both kinds throughout an epoch.
    return tf.data.Dataset.sample_from_datasets(parts, weights=[float(len(clean)), float(len(faulty))], seed=0,
                                                stop_on_empty_dataset=False)


def indexed_records(path: str) -> tf.data.Dataset:
    """(index, record) of every record of one shard, known faults left out."""
    return _skipping_indexed(path) if path in _FAULTS else _fast_indexed(path)


def _fast_indexed(path) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(path).enumerate()


def _skipping_indexed(path) -> tf.data.Dataset:
    """(index, record) of a shard with known faults, through the skipping reader (Python, in tf.data)."""
    return tf.data.Dataset.from_generator(
        lambda p: _good_records(p.decode() if isinstance(p, bytes) else p), args=(path,),
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)))


# --- Corrupt records -------------------------------------------------------------------------------------------

_HEADER, _FOOTER = 12, 4  # uint64 length + masked CRC32C of it; masked CRC32C of the data.


@dataclasses.dataclass
class ShardFaults:
    """What is known to be wrong in one shard: framing faults (by byte offset) and records to leave out."""

    records: int = 0  # Well-framed records (undecodable ones included).
    corrupt: List[Tuple[int, int, str]] = dataclasses.field(default_factory=list)  # (offset, index, reason)
    skip: Dict[int, str] = dataclasses.field(default_factory=dict)  # index -> reason (undecodable)


_FAULTS: Dict[str, ShardFaults] = {}


def _masked_crc(data) -> int:
    import google_crc32c  # Ships with google-cloud-storage; a C implementation.

    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _valid_at(data: memoryview, pos: int) -> Optional[int]:
    """The end of the record at `pos` if its framing and both checksums hold, else None."""
    if len(data) - pos < _HEADER + _FOOTER:
        return None
    (length,) = struct.unpack_from("<Q", data, pos)
    if _masked_crc(data[pos:pos + 8]) != struct.unpack_from("<I", data, pos + 8)[0]:
        return None
    end = pos + _HEADER + length + _FOOTER
    if end > len(data) or _masked_crc(data[pos + _HEADER:end - _FOOTER]) != struct.unpack_from("<I", data, end - 4)[0]:
        return None
    return end


def _plausible_starts(data: memoryview, start: int, chunk: int = 1 << 20) -> Iterator[int]:
    """Offsets from `start` whose 8 bytes, read as a record length, fit in the rest of the data (vectorized).

    Damaged or foreign bytes almost never look like a small length, so this keeps the search for the next
    record fast (checksums are computed only at these offsets).
    """
    import numpy as np

    raw = np.frombuffer(data, np.uint8)
    for begin in range(start, len(raw) - _HEADER - _FOOTER + 1, chunk):
        end = min(begin + chunk, len(raw) - _HEADER - _FOOTER + 1)
        offsets = np.arange(begin, end)
        # Little-endian uint64 at every offset of the chunk, from 8 shifted byte views.
        lengths = np.zeros(len(offsets), np.uint64)
        for k in range(8):
            lengths |= raw[begin + k:end + k].astype(np.uint64) << np.uint64(8 * k)
        fits = lengths <= (len(raw) - offsets - _HEADER - _FOOTER).astype(np.uint64)
        yield from (int(p) for p in offsets[fits])


def frames_of(data: memoryview) -> Iterator[Tuple[str, int, object]]:
    """("record", offset, bytes) and ("corrupt", offset, reason) over a whole shard's bytes, resynchronizing."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER:
            yield "corrupt", pos, f"truncated record header ({len(data) - pos} bytes at the end)"
            return
        (length,) = struct.unpack_from("<Q", data, pos)
        header_ok = _masked_crc(data[pos:pos + 8]) == struct.unpack_from("<I", data, pos + 8)[0]
        end = pos + _HEADER + length + _FOOTER
        if header_ok and end > len(data):
            yield "corrupt", pos, f"truncated record ({len(data) - pos} of {end - pos} bytes)"
            return
        if header_ok and _masked_crc(data[pos + _HEADER:end - _FOOTER]) == struct.unpack_from("<I", data, end - 4)[0]:
            yield "record", pos, bytes(data[pos + _HEADER:end - _FOOTER])
            pos = end
            continue
        if header_ok:  # Only the payload is damaged: the length is trustworthy, the next record follows it.
            yield "corrupt", pos, "corrupt record (data checksum mismatch)"
            pos = end
            continue
        # The length itself is damaged: look for the next offset where a whole valid record starts.
        resync = next((p for p in _plausible_starts(data, pos + 1) if _valid_at(data, p) is not None), len(data))
        yield "corrupt", pos, f"corrupt record header ({resync - pos} bytes skipped)"
        pos = resync


def read_shard(path: str) -> memoryview:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return memoryview(f.read())
    except tf.errors.OpError as e:
        raise UsageError(f"TFRecord shard {path} cannot be read ({type(e).__name__}: "
                         f"{e.message.splitlines()[0][:200]})") from None


def _good_records(path: str) -> Iterator[Tuple[int, bytes]]:
    faults = _FAULTS.get(path, ShardFaults())
    index = 0
    for kind, _, value in frames_of(read_shard(path)):
        if kind == "record":
            if index not in faults.skip:
                yield index, value
            index += 1


def scan(path: str) -> ShardFaults:
    """Validates every record of one shard; UsageError if it cannot be read or holds no valid record at all."""
    data = read_shard(path)
    faults = ShardFaults()
    for kind, offset, value in frames_of(data):
        if kind == "record":
            faults.records += 1
        else:
            faults.corrupt.append((offset, faults.records, value))
    if len(data) and not faults.records:
        raise UsageError(f"TFRecord shard {path} holds no readable record ({faults.corrupt[0][2]} at byte "
                         f"{faults.corrupt[0][0]}): not a TFRecord file, or damaged from its start")
    return faults


def skip_corrupt(shards: Sequence[str], source: str, max_bad_fraction: float) -> List[dict]:
    """Scans `shards` after TensorFlow reported a corrupt record; from now on `records` skips every fault found.

    Returns:
        The newly found faults, as `skipped` reports them.

    Raises:
        UsageError: a shard that cannot be read at all, or more than `max_bad_fraction` of the
            records corrupt.
    """
    found, total, bad = {}, 0, 0
    for path in sorted(set(shards)):
        faults = scan(path)
        total += faults.records + len(faults.corrupt)
        bad += len(faults.corrupt) + len(_FAULTS[path].skip if path in _FAULTS else ())
        if faults.corrupt:
            found[path] = faults
    report = [entry for path, faults in sorted(found.items()) for entry in _entries(path, faults)]
    if bad > max_bad_fraction * total:
        first = ", ".join(f"{r['shard']} at byte {r['offset']}" for r in report[:3])
        raise UsageError(f"{source}: {bad} of {total} records are corrupt or truncated, more than "
                         f"--max_bad_fraction={max_bad_fraction}; first: {first}")
    for path, faults in found.items():
        _FAULTS.setdefault(path, ShardFaults()).corrupt = faults.corrupt
        _FAULTS[path].records = faults.records
    if report:
        logging.warning("skipping %d corrupt or truncated record(s) of %d: %s%s", len(report), total,
                        ", ".join(f"{r['shard']} at byte {r['offset']} ({r['reason']})" for r in report[:5]),
                        ", ..." if len(report) > 5 else "")
    return report


def skip_records(path: str, reasons: Dict[int, str]) -> None:
    """Leaves these records (index -> reason) of one shard out of `records` from now on."""
    _FAULTS.setdefault(path, ShardFaults()).skip.update(reasons)


def remember(entry: dict) -> None:
    """Knows a fault again from its `skipped` entry (one written by an earlier process)."""
    faults = _FAULTS.setdefault(entry["shard"], ShardFaults())
    if "offset" in entry:
        fault = (int(entry["offset"]), int(entry["index"]), str(entry["reason"]))
        if fault not in faults.corrupt:
            faults.corrupt.append(fault)
            faults.corrupt.sort()
    else:
        faults.skip[int(entry["index"])] = str(entry["reason"])


def forget_faults() -> None:
    """Forgets every fault found so far in this process."""
    _FAULTS.clear()


def skipped(shards: Sequence[str]) -> List[dict]:
    """Every record skipped so far in `shards`: shard, byte offset (framing faults), record index, reason."""
    return [entry for path in sorted(set(shards)) if path in _FAULTS for entry in _entries(path, _FAULTS[path])]


def _entries(path: str, faults: ShardFaults) -> List[dict]:
    return ([{"shard": path, "offset": offset, "index": index, "reason": reason}
             for offset, index, reason in faults.corrupt]
            + [{"shard": path, "index": index, "reason": reason} for index, reason in sorted(faults.skip.items())])


def read_labels(shards: List[str], part: str, fraction: float, source: str,
                max_bad_fraction: float) -> List[Tuple[int, bytes]]:
    """(label, class text) of every record of `part`; corrupt records are skipped (`skip_corrupt`) and counted."""
    def read():
        return list(records(shards, part, fraction).map(
            parse_label_and_text, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator())

    try:
        return read()
    except tf.errors.DataLossError:
        skip_corrupt(shards, source, max_bad_fraction)
    return read()


def shard_name(output: str, split: str, index: int, count: int) -> str:
    return os.path.join(output, f"{split}-{index:05d}-of-{count:05d}.tfrecord")
