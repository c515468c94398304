"""Shared fixtures: the bundled model converted once per machine, a tiny Llama
built from a config, in-memory stores, a fake engine with canned replies, and the
app on top of them: a TestClient (`client`, `make_client`), the app on a real
loopback socket (`server`, `make_server`), and real `launch.py serve` processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.live_app import REPO, LiveServer, build_app, serve_in_thread  # noqa: E402
from tests.tiny_llama import tiny_llama  # noqa: E402

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from tests.fakes import FakeEngine

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
def tokenizer():
    """The real SmolLM2 tokenizer, with its chat template, without converting the model's weights.

    The quick tests need only the tokenizer (their models are tiny ones built
    from a config), so it comes from the converted checkpoint when one exists and
    otherwise from the GGUF's metadata (about 12 s once; then cached, 3.5 MB).
    """
    from transformers import AutoTokenizer

    from core.models import bundled_gguf_path, converted_dir

    checkpoint = converted_dir(CACHE)
    if (checkpoint / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(checkpoint)
    folder = CACHE / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        gguf = bundled_gguf_path()
        partial = CACHE / f".tokenizer-{os.getpid()}"
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(partial)
        try:
            partial.rename(folder)  # atomic; another session may have won the race
        except OSError:
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer Llama with random weights and the real tokenizer's vocabulary (tests/tiny_llama.py)."""
    return tiny_llama(tokenizer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """The tiny Llama (with a 1024-token context) and the real tokenizer (chat template included), saved
    to a folder: a --base-model for servers and training processes that must start in seconds."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer, max_position_embeddings=1024).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def real_engine(bundled_data_dir: Path):
    """The bundled SmolLM2-135M-Instruct in an Engine, loaded once per session."""
    from bot.serving.engine import Engine

    return Engine.load(None, bundled_data_dir)


@pytest.fixture
def store():
    from storage import Store

    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture
def engine() -> FakeEngine:
    """A FakeEngine (tests/fakes.py): queue its replies with enqueue(); it records every call.
    Test files about a real engine define their own `engine`."""
    from tests.fakes import FakeEngine

    return FakeEngine()


@pytest.fixture
def make_client(store, engine) -> Callable[..., TestClient]:
    """make_client(engine=None, *, store=None, **options) -> a TestClient on tests/live_app.py's build_app:
    the test's `engine` and `store` unless others are given, and build_app's options (config, guard,
    training, watcher, ui). Server errors come back as answers (a 500), not as exceptions."""
    from fastapi.testclient import TestClient

    test_store, test_engine = store, engine

    def make(engine: Any = None, *, store: Any = None, base_url: str = "http://testserver",
             **options: Any) -> TestClient:
        app = build_app(test_store if store is None else store, test_engine if engine is None else engine,
                        **options)
        return TestClient(app, base_url=base_url, raise_server_exceptions=False)

    return make


@pytest.fixture
def client(make_client) -> TestClient:
    """A TestClient on the HTTP API over the test's `store` and `engine` (a FakeEngine); admin
    routes take the headers tests.live_app.ADMIN."""
    return make_client()


@pytest.fixture
def answer_id(client) -> str:
    """The id of an answer stored through `client`."""
    question = [{"role": "user", "content": "What is the capital of France?"}]
    response = client.post("/v1/chat/completions", json={"messages": question})
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture
def make_server(store, engine) -> Iterator[Callable[..., str]]:
    """make_server(engine=None, *, store=None, **options) -> the base URL of build_app's app (options as
    for make_client) served by uvicorn on a free loopback port, for clients that need a real socket;
    it stops when the test ends."""
    test_store, test_engine = store, engine
    with ExitStack() as servers:

        def make(engine: Any = None, *, store: Any = None, **options: Any) -> str:
            app = build_app(test_store if store is None else store, test_engine if engine is None else engine,
                            **options)
            return servers.enter_context(serve_in_thread(app))

        yield make


@pytest.fixture
def server(make_server) -> str:
    """The base URL of the HTTP API over the test's `store` and `engine`, on a real loopback socket."""
    return make_server()


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
