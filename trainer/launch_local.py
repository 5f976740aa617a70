"""Try multi-worker training on one machine: chief, workers and an evaluator as local processes.

    python -m trainer.launch_local --workers=1 --evaluator -- --data=digits --model_dir=runs/mw ...

Each task gets TF_CONFIG on free loopback ports, as Vertex AI would set it for a
multi-replica job (`--workers` counts the workers besides the chief, like Vertex's
worker pool 1). Logs are streamed with a `[chief]`, `[worker0]`, `[evaluator]`
prefix. Exits non-zero (and stops the others) as soon as any task fails.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List


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


def _stream(name: str, proc: subprocess.Popen, last_lines: Dict[str, str]) -> None:
    for line in proc.stdout:
        sys.stderr.write(f"[{name}] {line}")
        if line.strip():
            last_lines[name] = line.rstrip("\n")


def launch(workers: int, evaluator: bool, trainer_args: List[str], timeout: float = 0, ps: int = 0) -> int:
    """Runs every task to the end; returns 0 if all succeeded, else the first failure's status.

    Parameter servers serve until stopped: they are terminated once every other task is done.
    """
    procs, threads, last_lines = {}, [], {}
    for name, tf_config in task_configs(workers, evaluator, ps).items():
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
        procs[name] = subprocess.Popen([sys.executable, "-m", "trainer.task", *trainer_args], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        thread = threading.Thread(target=_stream, args=(name, procs[name], last_lines), daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.time() + timeout if timeout else None
    status = 0
    while any(p.poll() is None for n, p in procs.items() if not n.startswith("ps")):
        failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
        if failed or (deadline and time.time() > deadline):
            status = procs[failed[0]].returncode if failed else 124
            sys.stderr.write(f"launch_local: {'task ' + failed[0] + ' failed' if failed else 'timed out'}; "
                             "stopping the others\n")
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.2)
    for name, p in procs.items():
        if name.startswith("ps") and p.poll() is None:
            p.kill()  # A parameter server holds no state of its own; it blocks in C++ and ignores SIGTERM.
            p.wait(timeout=30)
            p.returncode = 0  # Stopped by us, as parameter servers are meant to be.
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    for thread in threads:
        thread.join(timeout=5)
    status = status or next((p.returncode for p in procs.values() if p.returncode), 0)
    if status == 0 and "chief" in last_lines:
        print(last_lines["chief"])  # The chief's JSON summary, as the last stdout line.
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.launch_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker tasks besides the chief [1]")
    parser.add_argument("--evaluator", action="store_true", help="also start an evaluator task")
    parser.add_argument("--ps", type=int, default=0, help="parameter-server tasks (implies "
                        "--strategy=parameter_server unless given) [0]")
    parser.add_argument("--timeout", type=float, default=0, help="stop everything after this many seconds")
    parser.add_argument("trainer_args", nargs="*", help="trainer flags, after --")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    flags = list(args.trainer_args)
    if not any(f.startswith("--strategy") for f in flags):
        flags.append("--strategy=parameter_server" if args.ps else "--strategy=multi_worker")
    return launch(args.workers, args.evaluator, flags, args.timeout, args.ps)


if __name__ == "__main__":
    sys.exit(main())
