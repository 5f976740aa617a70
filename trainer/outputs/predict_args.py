"""The arguments of batch prediction (`trainer.predict`), checked without TensorFlow: a mistake is one line at once,
before the 3 s of TensorFlow's import."""
from trainer.config import TTA_KINDS
from trainer.errors import UsageError

OUTPUT_FORMATS = (".csv", ".jsonl")


def check_arguments(data, output: str, top_k: int, batch_size: int, tta_kind: str, max_image_mb: int) -> None:
    """Raises UsageError naming the first argument at fault."""
    if not output.endswith(OUTPUT_FORMATS):
        raise UsageError(f"--output={output} must end in .csv or .jsonl")
    if top_k < 1:
        raise UsageError(f"--top_k={top_k} must be at least 1")
    if batch_size < 1:
        raise UsageError(f"--batch_size={batch_size} must be a positive integer")
    if not data:
        raise UsageError("--data is required: a folder, a file glob, a TFRecord glob or an .npz file")
    if tta_kind not in TTA_KINDS:
        raise UsageError(f"--tta={tta_kind} is not one of {', '.join(TTA_KINDS)}")
    if max_image_mb < 1:
        raise UsageError(f"--max_image_mb={max_image_mb} must be at least 1")
