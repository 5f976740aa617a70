"""Preemption: SIGTERM saves a checkpoint and ends the run with a distinct exit status.

Vertex AI sends SIGTERM before it preempts or stops a machine, then restarts the
job with the same arguments; the same command resumes from the latest
checkpoint. While training, the signal is noticed after the current step: the
hook saves a checkpoint and raises `Preempted`; during an evaluation that follows a checkpoint, after the
current evaluation batch (that checkpoint is on disk; the rerun evaluates it). Outside training (loading data,
evaluating, exporting) the run stops at once; every file it writes is written
under a temporary name and renamed, so nothing half-written is left behind.

A signal handler in Python runs only when the main thread comes back to the interpreter. In a multi-worker
run whose peer died, the chief's main thread waits inside a collective op in TensorFlow's C++ runtime and never
comes back: a watchdog thread, woken by the C-level handler (`signal.set_wakeup_fd`), then ends the process
after `TRAINER_SIGTERM_GRACE_SECS` [20] with the same exit status and one line, rather than leave it to be
killed (SRE trial W7). The rerun resumes from the latest periodic checkpoint.
"""
import contextlib
import os
import signal
import threading
import time
from typing import Callable, Optional


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


def stop_evaluating_if_requested(step: Optional[int]) -> None:
    """Between two batches of an evaluation. One inside training (after each checkpoint), where a signal only sets the
    flag, used to run to its end, then export, before the run stopped: as long as the evaluation data takes (issue
    36, mobilenet_v2 at 224 on 2 CPUs: 9 s for 566 images, 18 s for 1,617, 44-48 s for 4,852, past a Spot VM's
    30 s). The checkpoint it evaluates is on disk: stop now; the same command evaluates that step when it
    resumes (its catch-up)."""
    if _requested.is_set():
        from absl import logging

        honouring()
        interrupted = _signal[0] == signal.SIGINT
        logging.warning("%s received during the evaluation of step %s: stopping it (the same command evaluates that "
                        "step when it resumes)", "SIGINT" if interrupted else "SIGTERM", step)
        logging.warning("%s: checkpoint saved at step %s (before its evaluation)",
                        "interrupted" if interrupted else "preempted", step)
        raise Preempted(step)


def stop_if_requested(step: Optional[int] = None) -> None:
    """Raises Preempted if a signal arrived while training and nothing has acted on it yet: one that landed during
    the last step's checkpoint, evaluation or export only set the flag (new-user trial #3)."""
    if _requested.is_set():
        honouring()
        raise Preempted(step)


def requested() -> bool:
    """True once SIGTERM or SIGINT has arrived (and install() or reclaim() handles them)."""
    return _requested.is_set()


def signal_name() -> str:
    """The signal that stops the run: `SIGTERM` or `SIGINT`."""
    return "SIGINT" if _signal[0] == signal.SIGINT else "SIGTERM"


def training_begins(multi_process: bool, step: Callable[[], int]) -> None:
    """An engine's training loop starts (main thread): the handlers reclaimed, a signal from here on waits for the
    end of the current step; one that arrived while the model was being built stops now (`step()`: where)."""
    reclaim(multi_process)
    _training.set()
    if _requested.is_set():
        raise Preempted(step())


def training_ends() -> None:
    """The loop is over: a signal stops the run at once again."""
    _training.clear()


@contextlib.contextmanager
def training():
    """A signal only sets the flag inside: raised at once it could land inside TensorFlow's C++-called Python
    (seen: a SIGTERM turned into an AttributeError in nest.flatten); the loop acts on it after the step."""
    _training.set()
    try:
        yield
    finally:
        _training.clear()


def preempt_after_step(step: int, save: Optional[Callable[[int], None]]) -> None:
    """After the step during which the signal arrived: `save(step)` (the chief's checkpoint; None elsewhere),
    with one line before and after, then Preempted. Both engines' loops end a step this way."""
    honouring()
    name = signal_name()
    from absl import logging

    logging.warning("%s received: saving a checkpoint at step %d, then stopping", name, step)
    if save is not None and save(step) is not False:
        logging.warning("%s: checkpoint saved at step %d", "interrupted" if name == "SIGINT" else "preempted", step)
    raise Preempted(step)


_installed = threading.Event()  # install() ran: the entry point owns this process's signals.
_honouring = threading.Event()  # The run has begun to act on the signal (saving its checkpoint, stopping).


def install() -> None:
    """Installs the SIGTERM and SIGINT handlers (main thread only; the entry point calls it)."""
    _requested.clear()
    _honouring.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    _installed.set()


def reclaim(multi_process: bool) -> None:
    """After a training session starts (main thread): the handlers installed again, since in multi-worker runs
    TensorFlow's own preemption notifier takes SIGTERM over at the C level and Python would never see it; and
    in multi-process runs the watchdog armed. Nothing without install() (a library caller's own handlers)."""
    if not _installed.is_set() or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if multi_process:
        _start_watchdog()


def honouring() -> None:
    """Called when the run acts on the signal: the watchdog then leaves it to finish."""
    _honouring.set()


_watchdog = []  # The one watchdog thread of this process.


def _start_watchdog() -> None:
    if _watchdog:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    thread = threading.Thread(target=_watch, args=(read_fd,), name="preemption-watchdog", daemon=True)
    thread.start()
    _watchdog.append(thread)


def _watch(read_fd: int) -> None:
    """Ends the process when a SIGTERM or SIGINT has not begun to end it within the grace period."""
    try:
        grace = max(float(os.environ.get("TRAINER_SIGTERM_GRACE_SECS", "20")), 0.0)
    except ValueError:
        grace = 20.0
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        wanted = [s for s in data if s in (signal.SIGTERM, signal.SIGINT)]
        if not wanted:
            continue
        time.sleep(grace)  # A run that honours the signal has begun to by now (measured: exit in about 1 s).
        if _honouring.is_set():
            continue
        name = "SIGINT" if wanted[-1] == signal.SIGINT else "SIGTERM"
        line = (f"error: {name} received {grace:g} s ago, but TensorFlow still holds the main thread (in a "
                "multi-worker run: a task of the cluster is gone, and a collective op waits for it); exiting "
                "without a preemption checkpoint: run the same command again to resume from the latest "
                "checkpoint\n").encode()
        import sys

        # The console (sys.stderr, the real one once fd 2 is captured) and train.log (fd 2's drain).
        for fd in {2, _fileno(sys.stderr)} - {None}:
            try:
                os.write(fd, line)
            except OSError:
                pass
        time.sleep(0.5)  # For the drain thread to copy the line into train.log.
        os._exit(EXIT_INTERRUPTED if name == "SIGINT" else EXIT_PREEMPTED)


def _fileno(stream) -> Optional[int]:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def uninstall() -> None:
    """Back to the default (terminate): for tasks with nothing to save, such as parameter servers,
    which block in C++ where a Python handler would never run."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


