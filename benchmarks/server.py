"""`python launch.py serve` in a child process on a free loopback port, for the benchmarks (and
tests) that measure the whole server; its output goes to data_dir/server.log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks import REPO

# A benchmark's server never reaches a model hub or sends analytics.
QUIET_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`launch.py serve` of `repo` (this checkout, or another one to compare with) on `data_dir`,
    with `extra` flags. Call wait_ready(), and stop() when done."""

    def __init__(self, data_dir: Path, base_model: str | Path, *extra: str,
                 password: str = "bench-admin-password", repo: Path = REPO):
        self.data_dir = Path(data_dir)
        self.password = password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open while the server runs; stop() closes it
        self.process = subprocess.Popen(
            [sys.executable, str(Path(repo) / "launch.py"), "serve", "--data-dir", str(self.data_dir),
             "--base-model", str(base_model), "--port", str(self.port), "--admin-password", password, *extra],
            cwd=repo, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **QUIET_ENV},
        )

    def wait_ready(self, timeout: float = 300) -> ServerProcess:
        """Wait until /healthz answers; raise with the server's log if it exits or takes too long."""
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
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        """Ask the server to exit, and kill it if it has not within 30 s."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
