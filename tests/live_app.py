"""Real servers for tests: an ASGI app served by uvicorn in a background thread
(for clients that need a real socket: gradio_client, the openai client), or
`python launch.py serve` in a subprocess (LiveServer)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def serve_in_thread(app: Any, *, timeout: float = 30, port: int = 0) -> Iterator[str]:
    """Yield the base URL of `app` served on 127.0.0.1 (on `port`, or a free one); the server stops on exit."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart on the same port (a browser's origin)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`python launch.py serve` in a subprocess, on a free loopback port."""

    def __init__(self, data_dir: Path, base_model: Path, *extra: str, password: str = "test-admin-password"):
        self.data_dir = Path(data_dir)
        self.password = password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        import subprocess
        import sys

        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "launch.py"), "serve", "--data-dir", str(self.data_dir),
             "--base-model", str(base_model), "--port", str(self.port), "--admin-password", password, *extra],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 300) -> LiveServer:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()
        self._log.close()
