"""One run per gs:// --model_dir: a lease object `<model_dir>/.trainer.lock`, tested against a real GCS server on
loopback (fake-gcs-server) with short leases. A real training run on gs:// cannot be tested here: TensorFlow's own
gs:// filesystem cannot be pointed at a local server (see NOTES.md), so these tests drive trainer.run_lock directly.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from trainer.run import run_lock
from trainer.errors import UsageError

pytestmark = pytest.mark.quick  # Seconds to a few minutes in all: `make test-fast` runs it.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URI = "gs://test-bucket/runs/a"
LOCK = "runs/a/.trainer.lock"

# A second process that takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLDER = """
import socket, sys
if sys.argv[3]:
    socket.gethostname = lambda: sys.argv[3]  # As if on another machine.
from trainer.run import run_lock
from trainer.errors import UsageError
try:
    with run_lock.hold(sys.argv[1], lease_secs=float(sys.argv[2])):
        print("held", flush=True)
        sys.stdin.read()
except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def _holder(lease_secs: float, host: str = "") -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, URI, str(lease_secs), host], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held", process.stderr.read()[-2000:]
    return process


def _lock(client):
    blob = client.bucket("test-bucket").get_blob(LOCK)
    return (json.loads(blob.download_as_text()), blob.generation) if blob else (None, None)


def _refused(lease_secs: float = 2.0) -> str:
    with pytest.raises(UsageError) as raised:
        with run_lock.hold(URI, lease_secs=lease_secs):
            pass
    return str(raised.value)


def test_a_live_lease_refuses_a_second_run_naming_its_holder_and_release_deletes_it(gcs_server):
    _, client = gcs_server
    holder = _holder(2.0)
    try:
        info, first_generation = _lock(client)
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        time.sleep(5)  # 2.5 leases: only renewals keep it alive.
        info, generation = _lock(client)
        assert generation != first_generation, "the lease must have been renewed"
        second = subprocess.run([sys.executable, "-c", HOLDER, URI, "2", ""], cwd=REPO, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60)
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert second.returncode == 1 and len(errors) == 1 and "held" not in second.stdout, second.stderr[-2000:]
        assert errors[0].startswith(f"error: --model_dir={URI} is in use by another run (pid {holder.pid} on "
                                    f"{socket.gethostname()}, started {info['started']}")
        assert errors[0].endswith("wait for it to end, or use another --model_dir")
        assert holder.poll() is None
    finally:
        holder.stdin.close()  # The holder ends normally: it releases the lease.
        assert holder.wait(timeout=60) == 0, holder.stderr.read()[-2000:]
    assert _lock(client) == (None, None)


def test_an_expired_lease_of_a_killed_holder_on_another_machine_is_taken_over(gcs_server):
    _, client = gcs_server
    holder = _holder(2.0, host="preempted-vm")
    started = _lock(client)[0]["started"]
    assert f"(pid {holder.pid} on preempted-vm, started {started}" in _refused()
    holder.send_signal(signal.SIGKILL)  # No release: only the lease's expiry frees the folder.
    holder.wait()
    killed = time.time()
    assert f"(pid {holder.pid} on preempted-vm" in _refused()  # Another machine's pid cannot be checked: wait.
    while True:
        try:
            with run_lock.hold(URI, lease_secs=2.0):
                taken = time.time() - killed
                info, _ = _lock(client)
                assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
            break
        except UsageError as e:
            assert "is in use by another run" in str(e)
            assert time.time() - killed < 10, "an expired lease must be taken over"
            time.sleep(0.2)
    assert 1.0 < taken < 2.0 + 2.5, taken  # After the lease lapsed (2 s after its last renewal), not before.
    assert _lock(client) == (None, None)


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(gcs_server):
    _, client = gcs_server
    holder = _holder(60.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert _lock(client)[0]["pid"] == holder.pid  # Left behind, with 60 s to run.
    with run_lock.hold(URI):  # Its pid is gone on this host: no need to wait for the lease.
        assert _lock(client)[0]["pid"] == os.getpid()
    assert _lock(client) == (None, None)


@pytest.mark.parametrize("left_behind", [False, True])
def test_of_concurrent_takers_exactly_one_wins(gcs_server, left_behind):
    _, client = gcs_server
    for _ in range(4):
        if left_behind:  # An expired lease of a machine that is gone: all takers race to overwrite it.
            client.bucket("test-bucket").blob(LOCK).upload_from_string(json.dumps(
                {"host": "gone-vm", "pid": 7, "started": "2026-01-01T00:00:00Z", "lease_secs": 0.2}))
            time.sleep(0.5)
        barrier, results = threading.Barrier(3), []

        def take():
            lease = run_lock.GcsLease(URI, lease_secs=5.0)
            barrier.wait()
            try:
                lease.acquire()
                results.append(lease)
            except UsageError as e:
                results.append(str(e))

        threads = [threading.Thread(target=take) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [r for r in results if isinstance(r, run_lock.GcsLease)]
        losers = [r for r in results if isinstance(r, str)]
        assert len(winners) == 1 and len(losers) == 2, results
        assert all(f"is in use by another run (pid {os.getpid()} on " in message for message in losers), losers
        info, _ = _lock(client)
        assert info["token"] == winners[0].token
        winners[0].release()
        assert _lock(client) == (None, None)


def test_a_lease_lost_to_a_takeover_is_not_deleted_by_its_old_holder(gcs_server):
    _, client = gcs_server
    old = run_lock.GcsLease(URI, lease_secs=1.0)
    old.acquire()
    old._stop.set()  # As if the holder froze (or lost its network) for longer than its lease.
    old._thread.join()
    old._stop.clear()
    time.sleep(1.5)
    new = run_lock.GcsLease(URI, lease_secs=30.0)
    new.acquire()  # The lapsed lease is taken over.
    old.release()  # Its conditional delete names a generation that is no longer there.
    assert _lock(client)[0]["token"] == new.token
    new.release()
    assert _lock(client) == (None, None)


def test_non_chief_tasks_take_no_lock(gcs_server):
    _, client = gcs_server
    with run_lock.hold(URI, chief=False):
        assert _lock(client) == (None, None)
    with run_lock.hold(URI, lease_secs=2.0):
        with run_lock.hold(URI, chief=False):  # A worker of the same run, alongside its chief.
            pass
        assert _lock(client)[0]["pid"] == os.getpid()
