"""The app the tests talk to, and real servers for it: the app built as `bot.server` wires it
(on a fake engine by default), served by uvicorn in a background thread (for clients that need a
real socket: gradio_client, the openai client, a browser), or `python launch.py serve` in a
subprocess (LiveServer). conftest.py's `client`, `server` and `live_server_factory` use these."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.server import ServerProcess, free_port

if TYPE_CHECKING:  # conftest imports this module: the app's own modules load when a test builds one
    from fastapi import FastAPI

    from bot.auth import AdminGuard
    from bot.serving.contracts import ChatEngine
    from bot.serving.watcher import ModelWatcher
    from core.config import ServeConfig
    from core.training_contract import TrainingController
    from storage import Store

REPO = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "test-admin-password"
ADMIN = {"Authorization": f"Bearer {ADMIN_PASSWORD}"}

__all__ = ["ADMIN", "ADMIN_PASSWORD", "REPO", "LiveServer", "build_app", "chat_ui", "free_port", "serve_in_thread"]


def build_app(
    store: Store,
    engine: ChatEngine | None = None,
    *,
    config: ServeConfig | None = None,
    guard: AdminGuard | None = None,
    training: TrainingController | None = None,
    watcher: ModelWatcher | None = None,
    integration: AdminGuard | None = None,
    ui: bool = False,
) -> FastAPI:
    """The app as `bot.server.create_app` builds it: a ChatService on `engine` (a FakeEngine unless
    given) and `store`, admin routes behind `guard` (the password ADMIN_PASSWORD unless given), the
    Open WebUI routes behind `integration` (`guard` unless given).

    With `ui`, create_app itself: the HTTP API and the Gradio UI (about 2 s to build). Without, the
    API routes alone on a bare FastAPI app, added as create_app adds them (milliseconds), which is
    all that the tests of the HTTP API need.
    """
    from fastapi import FastAPI

    from bot.api.app import add_api
    from bot.auth import AdminGuard
    from bot.chat.service import ChatService
    from bot.server import create_app
    from core.config import ServeConfig
    from tests.fakes import FakeEngine

    service = ChatService(engine or FakeEngine(), store, config or ServeConfig())
    guard = guard or AdminGuard(ADMIN_PASSWORD)
    if ui:
        return create_app(service, guard, training=training, watcher=watcher, integration=integration)
    app = FastAPI()
    app.state.service = service
    app.state.watcher = watcher  # the LoRA routes and /healthz ask it, as in create_app
    add_api(app, service, guard, training=training, integration=integration)
    return app


@contextmanager
def chat_ui(data_dir: Path, engine: ChatEngine | None = None) -> Iterator[tuple[Store, str]]:
    """The whole app, UI included, on a fake engine (or `engine`) and a real database in `data_dir`,
    served in a background thread: yields (its store, its URL); the server stops and the store closes on exit."""
    from core.config import ServeConfig
    from storage import Store
    from tests.fakes import FakeEngine

    store = Store(data_dir / "exemplar.db")
    config = ServeConfig(data_dir=data_dir, admin_password=ADMIN_PASSWORD)
    try:
        with serve_in_thread(build_app(store, engine or FakeEngine(), config=config, ui=True)) as url:
            yield store, url
    finally:
        store.close()


@contextmanager
def serve_in_thread(app: Any, *, timeout: float = 30, port: int = 0, **options: Any) -> Iterator[str]:
    """Yield the base URL of `app` served on 127.0.0.1 (on `port`, or a free one); the server stops on exit.
    `options` go to uvicorn.Config (bot.server.uvicorn_options' proxy settings, say)."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart on the same port (a browser's origin)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    settings = {"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 1, **options}
    server = uvicorn.Server(uvicorn.Config(app, **settings))
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


class LiveServer(ServerProcess):
    """`python launch.py serve` of this checkout in a subprocess, on a free loopback port, with
    the tests' admin password unless told another (benchmarks/server.py starts it)."""

    def __init__(self, data_dir: Path, base_model: Path, *extra: str, password: str = ADMIN_PASSWORD):
        super().__init__(data_dir, base_model, *extra, password=password)
