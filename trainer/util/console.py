"""What a person sees on the console, and everything else in `<model_dir>/train.log`.

`install` (from the command line only) takes over Python logging and file
descriptor 2:
- the console (the real stderr) gets the lines written for it with `say` (the
  header, progress, one line per evaluation, the summary), warnings logged by
  trainer's own modules, and errors from anywhere. TensorFlow's deprecation
  notices, Estimator internals and Python warnings go to the log only;
  `--verbose` shows the full log on the console too;
- the log gets every record (absl, TensorFlow's Python log, Python warnings) and
  whatever reaches fd 2 (TensorFlow's C++ log): fd 2 is a pipe drained by a thread
  that copies each line to the log and passes error lines (`E`/`F`) and anything
  that is not a C++ log line on to the console.

Records are buffered until `attach(model_dir)` names the file (the model_dir is
known only after config validation); a resumed run appends after a separator line.
"""
import atexit
import datetime
import faulthandler
import logging
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from typing import Optional

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # trainer/, this file in trainer/util/
for _function in ("say", "header", "summary_block", "show", "log_only"):  # The log names their callers.
    absl_logging.ABSLLogger.register_frame_to_skip(__file__, _function)
# TensorFlow's C++ log: `2024-01-01 12:00:00.123: E ...` (TF 2.15), `E0000 00:00:1796.. 4296 file.cc:52] ...`
# (absl's format, TF 2.16+).
# (absl's seconds field holds the epoch seconds before absl's logging is initialised: `00:00:1796411700.446533`.)
_CPP_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) |([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ "
                       r"\S+:\d+\] )")
# Start-up lines that are errors only in form: no GPU driver on a CPU machine, absl's note before its logging starts.
# TFLite's converter and interpreter print to fd 2 without a log prefix (new-user c024, wrappers U5): train.log only.
# No CUDA driver is no error on a machine without an NVIDIA device; where one exists, it is shown.
_NO_GPU_HERE = not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia"))
_CPP_BENIGN = re.compile((r"failed call to cuInit|Could not find cuda drivers|" if _NO_GPU_HERE else "") +
                         r"^WARNING: All log messages before absl::InitializeLog\(\)|"
                         r"^INFO: Created TensorFlow Lite \w+ delegate|^fully_quantize: ")
_BUFFER_LIMIT = 20_000  # Lines kept before the log file is known.
LOG_NAME = "train.log"


class _Sink:
    """The log file (local; a gs:// model_dir gets a copy at `sync`), or a buffer until it is named."""

    def __init__(self):
        self._lock = threading.Lock()
        self._buffer = []
        self._file = None
        self.path = None  # Where the log belongs (local or gs://).
        self._local = None

    def write(self, text: str) -> None:
        with self._lock:
            if self._file:
                self._file.write(text)
                self._file.flush()
            elif len(self._buffer) < _BUFFER_LIMIT:
                self._buffer.append(text)

    def open(self, path: str, separator: str) -> None:
        with self._lock:
            if self._file:
                self._file.close()
            self.path = path
            self._local = path
            if "://" in path:  # Written locally, copied at `sync` (append: start from the copy there).
                import tensorflow as tf

                self._local = os.path.join(tempfile.mkdtemp(prefix="trainer-log-"), LOG_NAME)
                if tf.io.gfile.exists(path):
                    tf.io.gfile.copy(path, self._local, overwrite=True)
            else:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._file = open(self._local, "a", encoding="utf-8", errors="backslashreplace")
            self._file.write(separator)
            self._file.writelines(self._buffer)
            self._file.flush()
            self._buffer = []

    def sync(self) -> None:
        """Copies a local log to its gs:// place (no-op for local model_dirs)."""
        if self._file and self.path != self._local:
            import tensorflow as tf

            with self._lock:
                self._file.flush()
                tf.io.gfile.copy(self._local, self.path, overwrite=True)


class _SinkHandler(logging.Handler):
    def __init__(self, sink: _Sink):
        super().__init__(logging.NOTSET)
        self._sink = sink
        self.setFormatter(absl_logging.PythonFormatter())

    def emit(self, record):
        try:
            self._sink.write(self.format(record) + "\n")
        except OSError as e:  # A full or read-only disk: said once on stderr, never a logging traceback per line.
            if not getattr(self, "_failed", False):
                self._failed = True
                sys.stderr.write(f"warning: {LOG_NAME} can no longer be written ({e.strerror or e}); the console "
                                 "goes on\n")
        except Exception:  # A logging failure must never stop training.
            self.handleError(record)


class _ConsoleHandler(logging.Handler):
    """Writes to the *current* sys.stderr (so pytest's capture sees it); keeps a TTY bar on one line."""

    def __init__(self, verbose: bool):
        super().__init__(logging.NOTSET)
        self.verbose = verbose
        self.bar_shown = False
        self._full = absl_logging.PythonFormatter()

    def filter(self, record) -> bool:
        shown = getattr(record, "console", None)
        if shown is not None and not self.verbose:
            return shown
        if self.verbose:
            return shown is not False
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and _is_ours(record)

    def emit(self, record):
        try:
            if self.verbose:
                text = self._full.format(record)
            elif getattr(record, "console", None):
                text = record.getMessage()
            else:  # Upper case: the one `error: ...` line of a failed run stays the only one.
                text = f"{record.levelname}: {record.getMessage()}"
            self.write_line(text)
        except Exception:
            self.handleError(record)

    def write_line(self, text: str) -> None:
        stream = sys.stderr
        try:
            if self.bar_shown:
                stream.write("\r\033[K")
                self.bar_shown = False
            stream.write(text + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):  # The console's reader is gone: train.log still has every line.
            pass

    def write_bar(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()
        self.bar_shown = True


def _is_ours(record) -> bool:
    return record.pathname.startswith(_PACKAGE_DIR)


_state = {"sink": None, "console": None, "real_stderr": None, "drain": None, "previous": None}


def install(verbose: bool = False, capture_fd2: bool = True) -> None:
    """Routes logging to the console and the (buffered) log; call once per process, before TF logs.

    Args:
        verbose: show the full log on the console too.
        capture_fd2: also capture file descriptor 2 (TensorFlow's C++ log). Only for a process of
            our own (the command line), never inside another program or a test runner.
    """
    uninstall()
    sink, console = _Sink(), _ConsoleHandler(verbose)
    root = logging.getLogger()
    _state["previous"] = (list(root.handlers), root.level, sys.excepthook)
    for handler in list(root.handlers):  # absl's own stderr handler among them.
        root.removeHandler(handler)
    root.addHandler(_SinkHandler(sink))
    root.addHandler(console)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    logging.captureWarnings(True)
    # TensorFlow adds its own stderr handler unless the root logger has handlers; it has now.
    logging.getLogger("tensorflow").propagate = True
    _state.update(sink=sink, console=console)
    previous_hook = sys.excepthook

    def excepthook(kind, value, traceback):  # A bug's traceback: on the console and in the log.
        logging.getLogger("trainer").error("uncaught exception", exc_info=(kind, value, traceback),
                                           extra={"console": False})
        previous_hook(kind, value, traceback)

    sys.excepthook = excepthook
    if capture_fd2:
        _capture_fd2(sink, console)
    atexit.register(close)


def uninstall() -> None:
    """Restores fd 2 and drops our handlers (tests install and uninstall repeatedly)."""
    close()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, (_SinkHandler, _ConsoleHandler)):
            root.removeHandler(handler)
    if _state.get("previous"):
        handlers, level, hook = _state["previous"]
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        sys.excepthook = hook
        logging.captureWarnings(False)
    _state.update(sink=None, console=None, previous=None)


def installed() -> bool:
    return _state["sink"] is not None


def _capture_fd2(sink: _Sink, console: _ConsoleHandler) -> None:
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    faulthandler.enable(file=sys.stderr)  # A hard crash's traceback still reaches the console.

    def drain():
        shown = True
        with os.fdopen(read_end, encoding="utf-8", errors="backslashreplace") as pipe:
            for line in pipe:
                try:
                    sink.write(line)
                    match = _CPP_LINE.match(line)
                    this = shown
                    if match:  # A C++ log line; the lines after it without a prefix continue its message.
                        shown = this = (match.group(1) or match.group(2)) in "EF" and not _CPP_BENIGN.search(line)
                    elif _CPP_BENIGN.search(line):
                        this = False  # Itself only: what follows is judged on its own.
                    if this or console.verbose:
                        with console.lock:  # The handler's own lock: lines never interleave with a bar.
                            console.write_line(line.rstrip("\n"))
                except Exception:  # noqa: BLE001 - keep draining: a full pipe would block TensorFlow.
                    pass

    thread = threading.Thread(target=drain, name="fd2-drain", daemon=True)
    thread.start()
    _state.update(real_stderr=real, drain=thread)


def close() -> None:
    """Flushes the log: hands fd 2 back to the real stderr so the drain thread ends, then syncs."""
    real, thread = _state["real_stderr"], _state["drain"]
    if real is not None:
        try:
            os.dup2(real, 2)  # Closes the pipe's write end: the drain thread reads EOF.
            thread.join(timeout=5)
        except OSError:
            pass
        _state.update(real_stderr=None, drain=None)
    sink = _state["sink"]
    if sink is not None:
        try:
            sink.sync()
        except Exception as e:  # noqa: BLE001 - the run's result matters more than its log copy.
            sys.stderr.write(f"warning: could not copy {LOG_NAME} to {sink.path}: {e}\n")


def attach(model_dir: str) -> Optional[str]:
    """Starts writing the log into model_dir (train.log; train-<task>.log for the other tasks of a cluster).

    Returns the log's path, or None when `install` was not called (library use).
    """
    sink = _state["sink"]
    if sink is None:
        return None
    task = task_role()
    name = f"train-{task}.log" if task else LOG_NAME
    path = os.path.join(model_dir, name)
    if sink.path != path:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(sys.argv)
        sink.open(path, f"\n===== run started {stamp} (pid {os.getpid()}): {command}\n")
    return path


def log_path() -> Optional[str]:
    return _state["sink"].path if _state["sink"] else None


def sync() -> None:
    """Copies the log to a gs:// model_dir now (called at each evaluation)."""
    if _state["sink"] is not None:
        try:
            _state["sink"].sync()
        except Exception as e:  # noqa: BLE001
            absl_logging.warning("could not copy %s to %s: %s", LOG_NAME, _state["sink"].path, e)


def say(message: str, *args) -> None:
    """A line for the console (and the log)."""
    absl_logging.info(message, *args, extra={"console": True})


def log_only(message: str, *args, level: str = "info") -> None:
    """A record for the log alone (e.g. the `error:` line task.py already printed); level: info, warning, error."""
    logging.getLogger("trainer").log(logging.getLevelName(level.upper()), message, *args, extra={"console": False},
                                     stacklevel=2)


def is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A bar redrawn in place on a terminal; a logged line every `every_secs` elsewhere."""

    def __init__(self, every_secs: float = 10.0, bar_every_secs: float = 0.5):
        self._tty = is_terminal() and _state["console"] is not None and not _state["console"].verbose
        self._every = bar_every_secs if self._tty else every_secs
        self._line_every = every_secs
        self._last = self._last_line = time.time()  # The first line after `every_secs`, not at step 1.

    def due(self, final: bool = False) -> bool:
        return final or time.time() - self._last >= self._every

    def show(self, step: int, total: int, text: str, final: bool = False) -> None:
        now = time.time()
        self._last = now
        if self._tty:
            width, console = 24, _state["console"]
            done = int(width * min(step, total) / max(total, 1))
            with console.lock:
                console.write_bar(f"[{'#' * done}{'.' * (width - done)}] {text}")
                if final:  # Keep the finished bar as a line of its own.
                    sys.stderr.write("\n")
                    console.bar_shown = False
            if now - self._last_line >= self._line_every or final:  # The log still gets lines.
                log_only("%s", text)
                self._last_line = now
        else:
            say("%s", text)


def task_role() -> str:
    """'' for the chief (or a single process), else e.g. 'worker0', 'evaluator0', from TF_CONFIG."""
    import json

    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    except (ValueError, AttributeError):
        return ""  # trainer.run.distribution reports a bad TF_CONFIG as an error.
    kind = task.get("type") if isinstance(task, dict) else None
    return "" if kind in (None, "chief", "master") else f"{kind}{task.get('index', 0)}"


def header(model_dir: str, run_info: dict, model_summary: dict, resume_step: Optional[int],
           total_steps: Optional[int] = None) -> None:
    """The few lines that say what this run is."""
    flags = run_info.get("flags") or {}
    names = run_info.get("class_names") or []
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in sorted((run_info.get("counts") or {}).items()))
    role = task_role()
    if role:
        say("task: %s of a multi-worker cluster (TF_CONFIG); the chief writes the run's files", role)
    say("data: %s: %d classes (%s)%s", flags.get("data"), len(names), shown, f"; {sizes}" if sizes else "")
    skipped = run_info.get("skipped_files") or []
    if skipped:
        say("data: skipped %d unreadable file(s), listed in run_info.json", len(skipped))
    say("model: %s, %s params (%s trainable)", flags.get("base_model") or flags.get("model_fn") or
        flags.get("backbone"), f"{model_summary.get('total_params', 0):,}",
        f"{model_summary.get('trainable_params', 0):,}")
    replicas = run_info.get("num_replicas", 1)
    if role.startswith("evaluator"):  # It trains nothing: no replicas or batch to speak of (new-user trial c041).
        say("strategy: %s; this task evaluates the chief's checkpoints (batch %s)", run_info.get("strategy"),
            flags.get("batch_size"))
    else:
        say("strategy: %s, %d replica%s, global batch %s (%s per replica)", run_info.get("strategy"), replicas,
            "" if replicas == 1 else "s", flags.get("batch_size"), run_info.get("per_replica_batch_size"))
    start = f", resuming from step {resume_step}" if resume_step else ""
    say("model_dir: %s (%d steps%s)%s", model_dir, total_steps or flags.get("train_steps", 0), start,
        f"; full log: {log_path()}" if log_path() else "")


def tf_exists(path: str) -> bool:
    """os.path.exists for local paths, TensorFlow's filesystem for gs://."""
    if "://" not in path:
        return os.path.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def summary_block(summary: dict, seconds: float, best, report_path: Optional[str]) -> None:
    """The closing lines: result, best evaluation, where things are."""
    metrics = ", ".join(f"{k} {summary[k]:.4f}" for k in ("accuracy", "loss") if isinstance(summary.get(k), float))
    best_text = f" (best accuracy {best[1]:.4f} at step {best[0]})" if best else ""
    say("done in %s: step %s, %s%s", time.strftime("%H:%M:%S", time.gmtime(seconds)), summary.get("global_step"),
        metrics, best_text)
    model_dir = summary.get("model_dir")
    tflite = os.path.join(model_dir, "export", "tflite", "model.tflite") if model_dir else None
    if tflite and not tf_exists(tflite):  # Trial c067: the closing lines named every output but this one.
        tflite = None
    for label, value in (("export", summary.get("export")), ("tflite", tflite), ("report", report_path),
                         ("log", log_path()),
                         ("tensorboard", f"tensorboard --logdir={shlex.quote(model_dir)}")):
        if value:
            say("  %-12s %s", label + ":", value)
