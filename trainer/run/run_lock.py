"""One training run per --model_dir: an exclusive lock held for the life of the run.

Two runs in one folder delete each other's in-flight exports and interleave checkpoints. The chief takes an
OS lock (flock) on `<model_dir>/.trainer.lock`; the kernel releases it when the process ends in any way
(SIGKILL included), so a killed or preempted run never locks out the rerun. The file holds who took it
(host, pid, start time) for the message a second run prints. gs:// folders are not locked here (TensorFlow's
gs:// filesystem has no locks); neither are filesystems without flock (a warning says so).
"""
import contextlib
import json
import os
import socket
import time

from absl import logging

from trainer.errors import UsageError

LOCK_NAME = ".trainer.lock"


@contextlib.contextmanager
def hold(model_dir: str, chief: bool = True):
    if not chief or "://" in model_dir:
        yield
        return
    import fcntl

    path = os.path.join(model_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--model_dir={model_dir} is in use by another run ({_holder(fd)}); wait for it to end, "
                             "or use another --model_dir") from None
        except OSError as e:  # A filesystem without locks (some network mounts): run, but say so.
            logging.warning("could not lock %s (%s): nothing stops a second run in this --model_dir", path, e.strerror)
        else:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode())
        yield
    finally:
        os.close(fd)  # Releases the lock.


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
