"""The one exception type for mistakes a user can make."""
import argparse
import re



class UsageError(Exception):
    """A mistake in flags or data that the user can fix.

    The entry point prints it as a single `error: <message>` line and exits 1,
    without a traceback. The message should name the flag at fault and, where
    it applies, the valid choices.
    """


class NumericError(UsageError):
    """Training diverged (NaN or infinite loss): reported like a user error, nothing exported."""


_DISK_ERRORS = {28: "no space left on device", 30: "read-only file system", 122: "disk quota exceeded"}
_DISK_TEXTS = {"No space left on device": 28, "errno = 28": 28, "Read-only file system": 30, "errno = 30": 30,
               "Disk quota exceeded": 122}


RESUMES = "it resumes from the latest checkpoint, and leftovers of this attempt are removed"


def disk_failure(error: BaseException, then: str = RESUMES):
    """One line for a full or read-only disk met anywhere (Python, h5py or TensorFlow I/O), else None.
    `then`: what the same command does once there is space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "errno", None)
        text = str(error)
        if code not in _DISK_ERRORS:
            code = next((c for t, c in _DISK_TEXTS.items() if t in text), None)
        if code in _DISK_ERRORS:
            path = getattr(error, "filename", None) or _path_in(text)
            if path:  # The final name, not our temporary one (`x.json.tmp-1a2b3c4d`).
                path = re.sub(r"\.tmp-[0-9a-f]{8}$", "", str(path))
            where = f" writing {path}" if path else ""
            return (f"{_DISK_ERRORS[code]}{where}: free space (or make the folder writable), then run the same "
                    f"command again: {then}")
        error = error.__cause__ or error.__context__
    return None


def _path_in(text: str):
    """The first absolute or gs:// path in an error message."""
    for match in re.finditer(r"((?:gs://|/)[^\s;:'\"]+)", text):
        # Not a TensorFlow device name (`..._device_/job:localhost/replica:0/...`, SRE trial W1).
        if not re.fullmatch(r"/(job|replica|task|device)", match.group(1)):
            return match.group(1)
    return None


def exit_on_disk_failure(error: BaseException, then: str) -> int:
    """For an entry point's `except Exception`: a full or read-only disk is one `error:` line and exit status 1;
    anything else is raised again (a bug of ours: its traceback is wanted)."""
    import sys

    message = disk_failure(error, then)
    if message is None:
        raise error
    sys.stderr.write(f"error: {message}\n")
    return 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the package's tools: a mistake is one `error:` line and exit status 1, like the trainer's
    (argparse's own is a usage block and exit 2; trial c214/c215)."""

    def error(self, message):
        self.exit(1, f"error: {message} (see --help)\n")
