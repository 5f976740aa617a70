"""Load test of the serving container's server, loopback only, bounded in requests and in time.

    python scripts/benchmark_serve.py [--export=EXPORT] [--requests=400] [--seconds=60] [--clients=1,8,32]
        [--max_batch=64,1] [--output=benchmarks/serve.json]

Without --export it trains a MobileNetV2 at 96x96 (random weights, 5 steps: speed does not depend on them) on a
synthetic folder of 256x256 JPEGs. For each --max_batch (64: concurrent requests share model calls; 1: one call
per request) it starts `python -m trainer.serve`, waits for health, and for each client count sends one-image
requests (JPEG bytes, b64) over keep-alive connections until --requests are answered or --seconds have passed;
it records requests/s, p50 and p99 latency, the answers by status (every one must be 200: any other fails the
run), the mean instances per model call, and the server's peak RSS. Then `trainer.predict` on the same files
and model, for its files/s. Prints a table and writes the figures as JSON.
"""
import argparse
import base64
import concurrent.futures
import glob
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default=None, help="a model to serve [a MobileNetV2 trained here]")
    parser.add_argument("--requests", type=int, default=400, help="requests per client count [400]")
    parser.add_argument("--seconds", type=float, default=60, help="time limit per client count [60]")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--max_batch", default="64,1", help="server --max_batch values to compare [64,1]")
    parser.add_argument("--images", type=int, default=256, help="synthetic JPEGs sent in turn [256]")
    parser.add_argument("--output", default=None, help="JSON figures [print only]")
    return parser.parse_args(argv)


def env():
    return {k: v for k, v in os.environ.items() if not k.startswith("AIP_")} | {
        "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}


def make_model(work: str, images: int):
    sys.path.insert(0, REPO)
    from scripts.benchmark_input import make_folder

    folder = os.path.join(work, "images")
    make_folder(folder, images, 256)
    proc = subprocess.run([sys.executable, "-m", "trainer.task", f"--data={folder}", "--backbone=mobilenet_v2",
                           "--weights=none", "--image_size=96", "--train_steps=5", "--batch_size=16",
                           "--eval_throttle_secs=0", "--engine=keras", "--calibrate=none",
                           f"--model_dir={os.path.join(work, 'run')}"], cwd=work, env=env(), capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode:
        sys.exit(f"error: training the benchmark model failed: {proc.stderr[-2000:]}")
    return os.path.join(work, json.loads(proc.stdout.strip().splitlines()[-1])["export"]), folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: str, max_batch: int, log_path: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trainer.serve", f"--export={export}", f"--port={port}",
                             f"--max_batch={max_batch}"], env=env(), stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited: {open(log_path).read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit("error: the server was not ready in 300 s")


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
        return json.load(r)


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, bodies, clients: int, requests: int, seconds: float) -> dict:
    """`clients` threads, each on its own keep-alive connection, until `requests` answered or `seconds` passed."""
    latencies, statuses = [], {}
    sent = iter(range(requests))
    deadline = time.time() + seconds

    def client(index):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        for n in sent:  # The shared iterator hands out request numbers (next() on a range iterator is atomic).
            if time.time() > deadline:
                break
            body = bodies[(n + index) % len(bodies)]
            started = time.perf_counter()
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            mine.append((time.perf_counter() - started, response.status))
        conn.close()
        return mine

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for mine in pool.map(client, range(clients)):
            for latency, status in mine:
                latencies.append(latency)
                statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.perf_counter() - started
    if not latencies:
        sys.exit(f"error: no request was answered within {seconds:g} s at {clients} clients")
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def predict_rate(export: str, folder: str, work: str) -> float:
    proc = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model={export}", f"--data={folder}",
                           f"--output={os.path.join(work, 'predict.csv')}"], env=env(), capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode:
        sys.exit(f"error: trainer.predict failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["inputs_per_second"]


def main(argv=None) -> int:
    args = parse(argv)
    work = tempfile.mkdtemp(prefix="benchmark-serve-")
    if args.export:
        export, folder = args.export, None
    else:
        export, folder = make_model(work, args.images)
    if folder is None:
        sys.path.insert(0, REPO)
        from scripts.benchmark_input import make_folder

        folder = os.path.join(work, "images")
        make_folder(folder, args.images, 256)
    files = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(open(f, "rb").read()).decode()}]}).encode()
              for f in files]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
               "export": export, "image_bytes_mean": round(statistics.mean(os.path.getsize(f) for f in files)),
               "runs": []}
    failed = False
    for max_batch in [int(b) for b in args.max_batch.split(",")]:
        log = os.path.join(work, f"serve-{max_batch}.log")
        proc, port = start_server(export, max_batch, log)
        try:
            for clients in [int(c) for c in args.clients.split(",")]:
                before = health(port)
                row = load(port, bodies, clients, args.requests, args.seconds)
                after = health(port)
                calls = after["model_calls"] - before["model_calls"]
                row.update(max_batch=max_batch, instances_per_call=round(
                    (after["instances"] - before["instances"]) / max(calls, 1), 2), peak_rss_mb=round(
                    peak_rss_mb(proc.pid)))
                failed |= set(row["statuses"]) != {"200"}
                results["runs"].append(row)
                print(f"max_batch {max_batch:>3}  clients {clients:>3}: {row['requests_per_s']:>7.1f} req/s  "
                      f"p50 {row['p50_ms']:>7.1f} ms  p99 {row['p99_ms']:>7.1f} ms  "
                      f"{row['instances_per_call']:>5.2f} per call  {row['requests']} answered {row['statuses']}  "
                      f"peak RSS {row['peak_rss_mb']} MB", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    results["predict_files_per_s"] = predict_rate(export, folder, work)
    print(f"trainer.predict on the same {len(files)} files: {results['predict_files_per_s']} files/s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)
    if failed:
        print("error: some requests were not answered 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
