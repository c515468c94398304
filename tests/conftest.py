"""Shared fixtures: the bundled model converted once per machine, a tiny Llama
built from a config, in-memory stores, and a fake engine with canned replies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
# The bundled GGUF takes ~25 s to dequantise; tests share one converted copy.
CACHE = Path(os.environ.get("EXEMPLAR_TEST_CACHE", REPO / ".cache" / "test-data"))


@pytest.fixture(scope="session")
def bundled_data_dir() -> Path:
    """A data dir holding the converted bundled model (shared by the tests; treat the model as read-only)."""
    from core.models import ensure_bundled_checkpoint

    ensure_bundled_checkpoint(CACHE)
    return CACHE


@pytest.fixture(scope="session")
def bundled_checkpoint(bundled_data_dir: Path) -> Path:
    from core.models import converted_dir

    return converted_dir(bundled_data_dir)


@pytest.fixture(scope="session")
def tokenizer(bundled_checkpoint: Path):
    """The real SmolLM2 tokenizer, with its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_checkpoint)


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer Llama with random weights and the real tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def real_engine(bundled_data_dir: Path):
    """The bundled SmolLM2-135M-Instruct in an Engine, loaded once per session."""
    from bot.engine import Engine

    return Engine.load(None, bundled_data_dir)


@pytest.fixture
def store():
    from storage import Store

    s = Store(":memory:")
    yield s
    s.close()


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

    def wait_ready(self, timeout: float = 120) -> LiveServer:
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


@pytest.fixture
def live_server_factory(tmp_path, bundled_checkpoint):
    """Start real servers with the bundled model: factory(*extra_flags, data_dir=None)."""
    servers = []

    def start(*extra: str, data_dir: Path | None = None) -> LiveServer:
        server = LiveServer(data_dir or tmp_path / f"data{len(servers)}", bundled_checkpoint, *extra)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"]
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        yield instance
        instance.close()
