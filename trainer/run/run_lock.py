"""One training run per --model_dir: an exclusive lock held for the life of the run.

Two runs in one folder delete each other's in-flight exports and interleave checkpoints.

Local folders: the chief takes an OS lock (flock) on `<model_dir>/.trainer.lock`; the kernel releases it when the
process ends in any way (SIGKILL included), so a killed or preempted run never locks out the rerun. The file holds
who took it (host, pid, start time) for the message a second run prints. Filesystems without flock are not locked
(a warning says so).

gs:// folders: a lease, the object `<model_dir>/.trainer.lock` (host, pid, start time, lease length), created
only if absent (`if_generation_match=0`) through google-cloud-storage. A background thread renews it every third of
the lease, each write conditional on the generation it wrote last; the run deletes it at exit (conditional too).
A second run that finds a live lease is refused; a lease not renewed for its length (its holder was killed, or
preempted and rerun elsewhere) is taken over by overwriting exactly that generation, so of two takers one wins.
A lease is judged by the server's write time of the object, not by the holder's clock. On the holder's own host a
lease whose process is gone is taken over at once. Non-chief tasks of a cluster take no lock.
"""
import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

from absl import logging

from trainer.errors import UsageError

LOCK_NAME = ".trainer.lock"
LEASE_SECS = 60.0  # A gs:// lease not renewed for this long is free to take over.

_HELD_TOKENS = set()  # The gs:// leases this process holds now.


@contextlib.contextmanager
def hold(model_dir: str, chief: bool = True, lease_secs: float = LEASE_SECS):
    if not chief:
        yield
        return
    if model_dir.startswith("gs://"):
        lease = GcsLease(model_dir, lease_secs)
        lease.acquire()
        try:
            yield
        finally:
            lease.release()
        return
    if "://" in model_dir:
        yield
        return
    import fcntl

    path = os.path.join(model_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"--model_dir={model_dir}: cannot open its run lock {path} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(model_dir, _holder(fd)) from None
        except OSError as e:  # A filesystem without locks (some network mounts): run, but say so.
            logging.warning("could not lock %s (%s): nothing stops a second run in this --model_dir", path, e.strerror)
        else:
            try:  # Who holds it, for the message a second run prints (a full disk leaves it empty: no matter).
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                         "started": _iso(time.time())}).encode())
            except OSError:
                pass
        yield
    finally:
        os.close(fd)  # Releases the lock.


def _in_use(model_dir: str, holder: str) -> UsageError:
    return UsageError(f"--model_dir={model_dir} is in use by another run ({holder}); wait for it to end, "
                      "or use another --model_dir")


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


class GcsLease:
    """The run lock of a gs:// model_dir (see the module's docstring): acquire(), then release()."""

    def __init__(self, model_dir: str, lease_secs: float = LEASE_SECS):
        self.model_dir = model_dir
        self.uri = model_dir.rstrip("/") + "/" + LOCK_NAME
        self.lease_secs = float(lease_secs)
        self.token = uuid.uuid4().hex  # Tells this lease from any other, of this process or another.
        self.started = _iso(time.time())
        self.generation: Optional[int] = None
        self.lost = False  # Another run took it over (this one's renewals failed for a whole lease).
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _body(self) -> str:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                           "renewed": _iso(now), "expires": _iso(now + self.lease_secs),
                           "lease_secs": self.lease_secs, "token": self.token})

    def acquire(self) -> None:
        """Takes the lease or raises UsageError (in use: naming its holder; Cloud Storage unreachable)."""
        _HELD_TOKENS.add(self.token)  # Before the first write: a taker in this process must see it alive.
        try:
            self.generation = self._take()
        except UsageError:
            _HELD_TOKENS.discard(self.token)
            raise
        except Exception as e:  # noqa: BLE001 - API errors, RetryError, connection errors: one line.
            _HELD_TOKENS.discard(self.token)
            raise UsageError(f"--model_dir={self.model_dir}: cannot take its run lock {self.uri} "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'})") \
                from None
        self._thread = threading.Thread(target=self._renew_loop, name="run-lock-renewal", daemon=True)
        self._thread.start()

    def _take(self) -> int:
        from google.api_core import exceptions

        from trainer.cloud import gcs

        for _ in range(10):
            try:
                return gcs.upload_text(self._body(), self.uri, if_generation_match=0, content_type="application/json")
            except exceptions.PreconditionFailed:
                pass
            current = gcs.read_text(self.uri)
            if current is None:  # Released in between: try again.
                continue
            text, generation, updated = current
            info = _parse(text)
            if info.get("token") == self.token:  # Our own write, whose reply was lost (and retried).
                return generation
            alive, why = _alive(info, updated)
            if alive:
                raise _in_use(self.model_dir, _describe(info, updated))
            try:  # Exactly that generation: of two takers, one wins; the other sees the winner's live lease.
                generation = gcs.upload_text(self._body(), self.uri, if_generation_match=generation,
                                             content_type="application/json")
            except exceptions.PreconditionFailed:
                continue
            logging.warning("--model_dir=%s: took over the run lock of %s (%s)", self.model_dir,
                            _describe(info, updated), why)
            return generation
        raise UsageError(f"--model_dir={self.model_dir}: its run lock {self.uri} keeps changing under this run; "
                         "is another run starting in the same folder?")

    def _renew_loop(self) -> None:
        from google.api_core import exceptions

        from trainer.cloud import gcs

        interval = self.lease_secs / 3
        failing = False
        while not self._stop.wait(interval):
            try:
                self.generation = gcs.upload_text(self._body(), self.uri, if_generation_match=self.generation,
                                                  deadline=interval, timeout=(min(5.0, interval), min(30.0, interval)),
                                                  content_type="application/json")
                if failing:
                    logging.warning("the run lock %s is renewed again", self.uri)
                failing = False
            except exceptions.PreconditionFailed:
                try:
                    current = gcs.read_text(self.uri, deadline=interval)
                except Exception:  # noqa: BLE001 - unknown: try again at the next renewal.
                    continue
                if current and _parse(current[0]).get("token") == self.token:  # A renewal whose reply was lost.
                    self.generation = current[1]
                    continue
                self.lost = True
                holder = _describe(_parse(current[0]), current[2]) if current else "nobody"
                logging.error("the run lock %s was taken over (now held by %s) after this run failed to renew it "
                              "for %g s: two runs may now write to --model_dir=%s", self.uri, holder,
                              self.lease_secs, self.model_dir)
                return
            except Exception as e:  # noqa: BLE001 - a network hiccup: said once, retried every interval.
                if not failing:
                    logging.warning("could not renew the run lock %s (%s: %s); retrying every %.0f s (another run "
                                    "may take it over if this lasts %g s)", self.uri, type(e).__name__,
                                    str(e)[:200], interval, self.lease_secs)
                failing = True

    def release(self) -> None:
        """Stops renewing and deletes the lease if it is still this run's."""
        from trainer.cloud import gcs

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_secs / 3 + 40)
        _HELD_TOKENS.discard(self.token)
        if self.lost or self.generation is None:
            return
        try:  # Checked first as well: some servers (fake-gcs-server) ignore a delete's generation precondition.
            current = gcs.read_text(self.uri, deadline=10.0)
            if current and _parse(current[0]).get("token") == self.token:
                gcs.delete_if_generation(self.uri, current[1], deadline=10.0)
        except Exception as e:  # noqa: BLE001 - the next run waits for the lease to expire instead.
            logging.warning("could not release the run lock %s (%s: %s): the next run in this --model_dir can "
                            "start once its lease expires (%g s)", self.uri, type(e).__name__, str(e)[:200],
                            self.lease_secs)


def _parse(text: str) -> dict:
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _expires(info: dict, updated: Optional[datetime.datetime]) -> float:
    """When a lease lapses: the server's time of its last write plus its length (not the holder's clock)."""
    try:
        lease = float(info.get("lease_secs", LEASE_SECS))
    except (TypeError, ValueError):
        lease = LEASE_SECS
    if updated is not None:
        return updated.timestamp() + lease
    return time.time() + lease  # No write time known: as if just renewed.


def _alive(info: dict, updated) -> tuple:
    """(alive, why not) for a lease found in the bucket."""
    expires = _expires(info, updated)
    if time.time() >= expires:
        return False, f"its lease expired at {_iso(expires)}"
    if info.get("host") == socket.gethostname():  # On this machine we can tell a dead holder at once.
        pid = info.get("pid")
        if pid == os.getpid():
            held = info.get("token") in _HELD_TOKENS
            return held, "" if held else "left by an earlier process of this pid"
        if isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False, "that process is gone"
            except OSError:
                pass
    return True, ""


def _describe(info: dict, updated) -> str:
    try:
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}; its lease runs until "
                f"{_iso(_expires(info, updated))} unless renewed")
    except KeyError:
        return f"holder unknown; its lease runs until {_iso(_expires(info, updated))} unless renewed"
