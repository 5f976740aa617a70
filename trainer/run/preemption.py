"""Preemption: SIGTERM saves a checkpoint and ends the run with a distinct exit status.

Vertex AI sends SIGTERM before it preempts or stops a machine, then restarts the
job with the same arguments; the same command resumes from the latest
checkpoint. While training, the signal is noticed after the current step: the
hook saves a checkpoint and raises `Preempted`. Outside training (loading data,
evaluating, exporting) the run stops at once; every file it writes is written
under a temporary name and renamed, so nothing half-written is left behind.
"""
import signal
import threading
from typing import Optional


EXIT_PREEMPTED = 143  # 128 + SIGTERM, as a shell reports a process ended by it.
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C).

_requested = threading.Event()
_training = threading.Event()
_signal = [signal.SIGTERM]  # The signal that stopped the run.


class Preempted(BaseException):
    """Raised out of train_and_evaluate when SIGTERM (or SIGINT, Ctrl-C) arrived.

    A BaseException, like KeyboardInterrupt: code that catches Exception (a logging handler, AutoGraph's
    tracing fallback, TensorFlow's own retries) must not swallow a stop request.
    """

    def __init__(self, step: Optional[int] = None):
        super().__init__(f"preempted at step {step}" if step is not None else "preempted")
        self.step = step
        self.signal_name = "SIGINT" if _signal[0] == signal.SIGINT else "SIGTERM"
        self.exit_status = EXIT_INTERRUPTED if _signal[0] == signal.SIGINT else EXIT_PREEMPTED


def _on_signal(signum, frame):
    first = not _requested.is_set()
    _signal[0] = signum
    _requested.set()
    # Outside training, or a second Ctrl-C: stop now (every file is written atomically).
    if not _training.is_set() or not first:
        raise Preempted()
    # Nothing is logged here: the main thread may be inside a write to the same stream (a full pipe), and a
    # second write from the handler fails ("reentrant call"). The hook logs it after the current step.


def install() -> None:
    """Installs the SIGTERM and SIGINT handlers (main thread only; the entry point calls it)."""
    _requested.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def uninstall() -> None:
    """Back to the default (terminate): for tasks with nothing to save, such as parameter servers,
    which block in C++ where a Python handler would never run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


