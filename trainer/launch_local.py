"""Try multi-worker training on one machine: chief, workers and an evaluator as local processes.

    python -m trainer.launch_local --workers=1 --evaluator -- --data=digits --model_dir=runs/mw ...

Each task gets TF_CONFIG on free loopback ports, as Vertex AI would set it for a
multi-replica job (`--workers` counts the workers besides the chief, like Vertex's
worker pool 1). Logs are streamed with a `[chief]`, `[worker0]`, `[evaluator]`
prefix, and every task's full log is also written to `<log_dir>/<task>.log`.

As soon as a task fails, the launcher says in one line which task and how
(`task worker0 was killed by signal 9 (SIGKILL)`, `task chief exited with status 1`),
stops the others (SIGTERM, then SIGKILL after a grace period), and prints one
summary line per stopped task instead of its console noise (a multi-worker cluster
that lost a member fills pages with errors and tracebacks; they stay in the log
files). A traceback that a task prints is held back a few seconds before it reaches the
console: a peer's death is noticed by then, and the survivor's traceback goes to its
log file only (counted in its summary line).

SIGTERM or SIGINT (Ctrl-C) sent to the launcher is passed on to every task (each
saves a checkpoint and exits 143, or 130), the launcher waits for them (at most
`--grace_secs`, then SIGKILL), prints one summary line per task and exits 143 (130).
The tasks run in their own sessions, so a Ctrl-C in the terminal reaches them once,
through the launcher.

Exit status: 0 when every task succeeded; the failed task's own status
(1 for an `error:` line, 143 when it was preempted); 128 + N when it was killed by
signal N (137 for SIGKILL), as a shell reports it; 124 after `--timeout`; 143 (130)
after a SIGTERM (SIGINT) to the launcher. Running the same command again resumes
from the latest checkpoint.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from trainer.errors import ArgumentParser

# How long stopped tasks get to exit on SIGTERM before they are killed.
STOP_GRACE_SECS = 15.0
# How long a task's traceback is held back from the console: long enough for the launcher to notice that a peer
# died (it polls every 0.2 s), which is what the survivors' tracebacks are about.
HOLD_SECS = 5.0
TRACEBACK = "Traceback (most recent call last):"


def free_ports(count: int) -> List[int]:
    """Ports the OS reports free on 127.0.0.1 (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_spec(workers: int, ps: int = 0) -> Dict[str, List[str]]:
    ports = free_ports(1 + workers + ps)
    spec = {"chief": [f"127.0.0.1:{ports[0]}"]}
    if workers:
        spec["worker"] = [f"127.0.0.1:{p}" for p in ports[1:1 + workers]]
    if ps:
        spec["ps"] = [f"127.0.0.1:{p}" for p in ports[1 + workers:]]
    return spec


def task_configs(workers: int, evaluator: bool, ps: int = 0) -> Dict[str, dict]:
    """TF_CONFIG of every task, keyed by its log prefix."""
    cluster = cluster_spec(workers, ps)
    tasks = {"chief": {"cluster": cluster, "task": {"type": "chief", "index": 0}}}
    for i in range(workers):
        tasks[f"worker{i}"] = {"cluster": cluster, "task": {"type": "worker", "index": i}}
    for i in range(ps):
        tasks[f"ps{i}"] = {"cluster": cluster, "task": {"type": "ps", "index": i}}
    if evaluator:  # Like Vertex: the evaluator is not in the cluster spec.
        tasks["evaluator"] = {"cluster": cluster, "task": {"type": "evaluator", "index": 0}}
    return tasks


class _Console:
    """Every task's lines go to its log file; to the console too, unless the launcher is stopping that task.

    A traceback, and every line of the task after it, is held back (`held`) until the launcher releases it: shown
    when the task failed first or nothing failed within HOLD_SECS; dropped (counted) when the task is one of the
    survivors of a failure, or is being stopped by a signal, so the console is not filled with their dying words.
    """

    def __init__(self):
        self.quiet = set()  # Tasks being stopped: their dying words go to their log files only.
        self.stopping = False  # The cluster is being stopped: held tracebacks are dropped, not shown.
        self.lock = threading.Lock()
        self.hidden: Dict[str, int] = {}  # Task -> lines kept out of the console.
        self.tracebacks: Dict[str, int] = {}
        self.last_lines: Dict[str, str] = {}
        self.held: Dict[str, List[str]] = {}  # Task -> lines held back, from a traceback's first line on.
        self.held_since: Dict[str, float] = {}
        self.ended: Dict[str, float] = {}  # Task -> when its output ended (the order in which tasks died).

    def stream(self, name: str, proc: subprocess.Popen, log_path: str) -> None:
        with open(log_path, "a") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self.lock:
                    if name in self.quiet:
                        self._hide(name, [line])
                    elif name in self.held or line.startswith(TRACEBACK):
                        self.held.setdefault(name, []).append(line)
                        self.held_since.setdefault(name, time.monotonic())
                    else:
                        sys.stderr.write(f"[{name}] {line}")
                if line.strip():
                    self.last_lines[name] = line.rstrip("\n")
        with self.lock:
            self.ended[name] = time.monotonic()

    def _hide(self, name: str, lines: List[str]) -> None:
        self.hidden[name] = self.hidden.get(name, 0) + len(lines)
        self.tracebacks[name] = self.tracebacks.get(name, 0) + sum(line.startswith(TRACEBACK) for line in lines)

    def release(self, names=None, force: bool = False, final: bool = False) -> None:
        """Held lines of `names` [every task]: dropped (counted) for a quiet task, or while stopping unless
        `force`; shown when `force`, `final` or held for HOLD_SECS; else kept."""
        with self.lock:
            for name in list(self.held if names is None else names):
                lines = self.held.get(name)
                if not lines:
                    continue
                if name in self.quiet or (self.stopping and not force):
                    self._hide(name, lines)
                elif force or final or time.monotonic() - self.held_since[name] >= HOLD_SECS:
                    sys.stderr.write("".join(f"[{name}] {line}" for line in lines))
                else:
                    continue
                del self.held[name], self.held_since[name]


def describe_status(returncode: int) -> str:
    """How a task ended: `status 1`, `signal 9 (SIGKILL)`."""
    if returncode < 0:
        try:
            return f"signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def _failure_line(name: str, returncode: int) -> str:
    how = "was killed by" if returncode < 0 else "exited with"
    return f"launch_local: task {name} {how} {describe_status(returncode)}"


def exit_status(returncode: int) -> int:
    """A task's return code as the launcher's exit status: 128 + N for a signal, as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def _term_when_parent_dies() -> None:
    """In the task, before it starts: SIGTERM when the launcher dies, even by SIGKILL (Linux), so no task outlives
    it holding the run's lock; the task then saves and stops as on any SIGTERM."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # Not Linux: the launcher's own handlers still pass signals on.


def launch(workers: int, evaluator: bool, trainer_args: List[str], timeout: float = 0, ps: int = 0,
           log_dir: Optional[str] = None, grace_secs: float = STOP_GRACE_SECS) -> int:
    """Runs every task to the end; returns 0 if all succeeded, else the first failure's status (see above).

    Parameter servers serve until stopped: they are terminated once every other task is done.
    """
    received: List[int] = []  # SIGTERM/SIGINT sent to the launcher, in order; acted on by the loops below.
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            handlers[signum] = signal.signal(signum, lambda signum, frame: received.append(signum))
        # A closed terminal or SSH session: as SIGTERM (the tasks, in their own session, get no SIGHUP themselves).
        handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signal.SIGTERM))
    try:
        return _launch(workers, evaluator, trainer_args, timeout, ps, log_dir, grace_secs, received)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _launch(workers, evaluator, trainer_args, timeout, ps, log_dir, grace_secs, received: List[int]) -> int:
    log_dir = log_dir or tempfile.mkdtemp(prefix="launch_local-")
    os.makedirs(log_dir, exist_ok=True)
    procs, threads, console = {}, {}, _Console()
    for name, tf_config in task_configs(workers, evaluator, ps).items():
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
        # Its own session: a Ctrl-C in the terminal reaches the task once, passed on by the launcher (a second
        # SIGINT would make the task stop at once, without its checkpoint).
        procs[name] = subprocess.Popen([sys.executable, "-m", "trainer.task", *trainer_args], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True, preexec_fn=_term_when_parent_dies)
        thread = threading.Thread(target=console.stream, daemon=True,
                                  args=(name, procs[name], os.path.join(log_dir, f"{name}.log")))
        thread.start()
        threads[name] = thread
    sys.stderr.write("launch_local: started " + ", ".join(f"{n} (pid {p.pid})" for n, p in procs.items())
                     + f"; full logs in {log_dir}/<task>.log\n")
    deadline = time.time() + timeout if timeout else None
    status, stopped, forwarded = 0, [], 0
    while any(p.poll() is None for n, p in procs.items() if not n.startswith("ps")):
        if received:  # SIGTERM/SIGINT to the launcher: every task gets it, saves and stops.
            forwarded = len(received)
            signum = received[0]
            status = 128 + signum
            # Parameter servers hold the variables the chief saves: they are stopped after the others, below.
            stopped = [n for n, p in procs.items() if p.poll() is None and not n.startswith("ps")]
            with console.lock:
                console.stopping = True
            sys.stderr.write(f"launch_local: {signal.Signals(signum).name} received; passing it on to "
                             f"{', '.join(stopped)} and waiting up to {grace_secs:g} s for them to save and stop "
                             f"(exit status {status})\n")
            for name in stopped:
                procs[name].send_signal(signum)
            break
        failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
        if failed or (deadline and time.time() > deadline):
            running = [n for n, p in procs.items() if p.poll() is None]
            for name in failed:
                threads[name].join(timeout=2)  # Its last words (an `error:` line) come first.
            # The task that died first: the others that failed too were most likely its victims.
            failed.sort(key=lambda n: console.ended.get(n, float("inf")))
            stopped = running + failed[1:]
            with console.lock:
                console.quiet.update(stopped)
            if failed:
                console.release([failed[0]], force=True)
                status = exit_status(procs[failed[0]].returncode)
                sys.stderr.write(f"{_failure_line(failed[0], procs[failed[0]].returncode)}; stopping the "
                                 f"others (exit status {status})\n")
            else:
                status = 124
                sys.stderr.write(f"launch_local: timed out after {timeout:g} s; stopping every task\n")
            with console.lock:
                console.stopping = True
            for name in running:
                procs[name].terminate()
            break
        console.release()
        time.sleep(0.2)
    grace = time.time() + grace_secs
    # Workers before parameter servers: a parameter server must serve until the chief's last save.
    for name in sorted(procs, key=lambda n: n.startswith("ps")):
        p = procs[name]
        if name.startswith("ps") and p.poll() is None and name not in stopped:
            p.kill()  # A parameter server holds no state of its own; it blocks in C++ and ignores SIGTERM.
            p.wait(timeout=30)
            p.returncode = 0  # Stopped by us, as parameter servers are meant to be.
        while p.poll() is None and time.time() < grace:
            for signum in received[forwarded:]:  # Another Ctrl-C: passed on too (the tasks then stop at once).
                for other in stopped:
                    if procs[other].poll() is None:
                        procs[other].send_signal(signum)
            forwarded = len(received)
            time.sleep(0.1)
        if p.poll() is None:
            p.kill()  # Stuck in a collective op with a dead peer: SIGTERM cannot reach Python.
            p.wait(timeout=30)
    for thread in threads.values():
        thread.join(timeout=5)
    console.release(final=True)
    for name in stopped:
        tracebacks = console.tracebacks.get(name, 0)
        sys.stderr.write(f"launch_local: stopped {name} ({describe_status(procs[name].returncode)}); "
                         f"{console.hidden.get(name, 0)} more log lines"
                         + (f", {tracebacks} traceback(s)" if tracebacks else "")
                         + f" in {os.path.join(log_dir, name + '.log')}\n")
    late = [n for n, p in procs.items() if p.returncode] if not status else []
    if late:  # Failed as the last tasks finished, between two polls.
        status = exit_status(procs[late[0]].returncode)
        sys.stderr.write(f"{_failure_line(late[0], procs[late[0]].returncode)} (exit status {status})\n")
    if status == 0 and "chief" in console.last_lines:
        print(console.last_lines["chief"])  # The chief's JSON summary, as the last stdout line.
    return status


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m trainer.launch_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker tasks besides the chief [1]")
    parser.add_argument("--evaluator", action="store_true", help="also start an evaluator task")
    parser.add_argument("--ps", type=int, default=0, help="parameter-server tasks (implies "
                        "--strategy=parameter_server unless given) [0]")
    parser.add_argument("--timeout", type=float, default=0, help="stop everything after this many seconds")
    parser.add_argument("--log_dir", default=None, help="where each task's full log goes [a new temporary folder]")
    parser.add_argument("--grace_secs", type=float, default=STOP_GRACE_SECS, help="after a task failed, seconds the "
                        f"others get to exit on SIGTERM before SIGKILL [{STOP_GRACE_SECS:g}]")
    parser.add_argument("trainer_args", nargs="*", help="trainer flags, after --")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    flags = list(args.trainer_args)
    if not any(f.startswith("--strategy") for f in flags):
        flags.append("--strategy=parameter_server" if args.ps else "--strategy=multi_worker")
    return launch(args.workers, args.evaluator, flags, args.timeout, args.ps, args.log_dir, args.grace_secs)


if __name__ == "__main__":
    sys.exit(main())
