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
files). Exit status: 0 when every task succeeded; the failed task's own status
(1 for an `error:` line, 143 when it was preempted); 128 + N when it was killed by
signal N (137 for SIGKILL), as a shell reports it; 124 after `--timeout`. Running
the same command again resumes from the latest checkpoint.
"""
import argparse
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

# How long stopped tasks get to exit on SIGTERM before they are killed.
STOP_GRACE_SECS = 15.0


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
    """Every task's lines go to its log file; to the console too, unless the launcher is stopping that task."""

    def __init__(self):
        self.quiet = set()  # Tasks being stopped: their dying words go to their log files only.
        self.lock = threading.Lock()
        self.hidden: Dict[str, int] = {}  # Task -> lines kept out of the console.
        self.tracebacks: Dict[str, int] = {}
        self.last_lines: Dict[str, str] = {}

    def stream(self, name: str, proc: subprocess.Popen, log_path: str) -> None:
        with open(log_path, "a") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                with self.lock:
                    if name in self.quiet:
                        self.hidden[name] = self.hidden.get(name, 0) + 1
                        if line.startswith("Traceback"):
                            self.tracebacks[name] = self.tracebacks.get(name, 0) + 1
                    else:
                        sys.stderr.write(f"[{name}] {line}")
                if line.strip():
                    self.last_lines[name] = line.rstrip("\n")


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


def launch(workers: int, evaluator: bool, trainer_args: List[str], timeout: float = 0, ps: int = 0,
           log_dir: Optional[str] = None, grace_secs: float = STOP_GRACE_SECS) -> int:
    """Runs every task to the end; returns 0 if all succeeded, else the first failure's status (see above).

    Parameter servers serve until stopped: they are terminated once every other task is done.
    """
    log_dir = log_dir or tempfile.mkdtemp(prefix="launch_local-")
    os.makedirs(log_dir, exist_ok=True)
    procs, threads, console = {}, {}, _Console()
    for name, tf_config in task_configs(workers, evaluator, ps).items():
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
        procs[name] = subprocess.Popen([sys.executable, "-m", "trainer.task", *trainer_args], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        thread = threading.Thread(target=console.stream, daemon=True,
                                  args=(name, procs[name], os.path.join(log_dir, f"{name}.log")))
        thread.start()
        threads[name] = thread
    sys.stderr.write("launch_local: started " + ", ".join(f"{n} (pid {p.pid})" for n, p in procs.items())
                     + f"; full logs in {log_dir}/<task>.log\n")
    deadline = time.time() + timeout if timeout else None
    status, stopped = 0, []
    while any(p.poll() is None for n, p in procs.items() if not n.startswith("ps")):
        failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
        if failed or (deadline and time.time() > deadline):
            stopped = [n for n, p in procs.items() if p.poll() is None]
            with console.lock:
                console.quiet.update(stopped)
            if failed:
                threads[failed[0]].join(timeout=2)  # Its last words (an `error:` line) come first.
                status = exit_status(procs[failed[0]].returncode)
                sys.stderr.write(f"{_failure_line(failed[0], procs[failed[0]].returncode)}; stopping the "
                                 f"others (exit status {status})\n")
            else:
                status = 124
                sys.stderr.write(f"launch_local: timed out after {timeout:g} s; stopping every task\n")
            for name in stopped:
                procs[name].terminate()
            break
        time.sleep(0.2)
    grace = time.time() + grace_secs
    for name, p in procs.items():
        if name.startswith("ps") and p.poll() is None and not stopped:
            p.kill()  # A parameter server holds no state of its own; it blocks in C++ and ignores SIGTERM.
            p.wait(timeout=30)
            p.returncode = 0  # Stopped by us, as parameter servers are meant to be.
        try:
            p.wait(timeout=max(grace - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()  # Stuck in a collective op with a dead peer: SIGTERM cannot reach Python.
            p.wait(timeout=30)
    for thread in threads.values():
        thread.join(timeout=5)
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
    parser = argparse.ArgumentParser(prog="python -m trainer.launch_local", description=__doc__.split("\n\n")[0])
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
