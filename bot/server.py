"""One server for everything: FastAPI routes plus the Gradio UI mounted at /,
and a watcher that hot-swaps the adapter when the active version changes."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from bot.admin import AdminGuard  # noqa: E402
from bot.contracts import ChatEngine, TrainingController  # noqa: E402
from bot.service import ChatService  # noqa: E402
from core.datadir import DataDir  # noqa: E402
from core.errors import ModelLoadError  # noqa: E402
from storage import Store  # noqa: E402
from storage.vocabulary import BASE_VERSION  # noqa: E402

log = logging.getLogger(__name__)


class ModelWatcher:
    """Keeps the engine on the store's active version. Training runs in another
    process and promotes by writing the store; this notices and swaps."""

    def __init__(self, engine: ChatEngine, store: Store, data_dir: Path, interval: float = 1.0):
        self.engine = engine
        self.store = store
        self.data_dir = Path(data_dir)
        self.interval = interval
        self.last_error: str | None = None
        # The version this watcher last put into service. Compared with the store, not with
        # engine.version: when this server is another Exemplar's upstream, requests may switch
        # the engine to a loaded LoRA by name, and that is not the watcher's to undo.
        self.serving: str | None = None
        # Set when the active version could not load at start and another one serves in its place.
        self.fallback: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> str:
        """Swap to the store's active version if the engine serves another; return the version served."""
        active = self.store.active_version()
        wanted = active["version"] if active else BASE_VERSION
        if wanted != self.serving:
            try:
                path = DataDir(self.data_dir).resolve(active["path"]) if active else None
                seconds = self.engine.activate(wanted, path)
                self.serving = wanted
                log.info("Swapped to %s in %.2f s", wanted, seconds)
                self.last_error = None
                self.fallback = None
            except ModelLoadError as exc:
                # Keep serving what we have; the admin sees the error in the log.
                if self.last_error != str(exc):
                    log.error("Cannot serve %s: %s", wanted, exc)
                self.last_error = str(exc)
                if self.serving is None:  # at start nothing serves yet: take the newest that loads
                    self._fall_back(wanted, exc)
        return self.engine.version

    def _fall_back(self, wanted: str, error: Exception) -> None:
        """Serve the newest version that loads (or the base model) in place of an active one that cannot."""
        for row in reversed(self.store.list_model_versions()):
            if row["version"] == wanted or row["status"] == "rejected":
                continue
            try:
                self.engine.activate(row["version"], DataDir(self.data_dir).resolve(row["path"]))
            except ModelLoadError:
                continue
            self.serving = row["version"]
            break
        else:
            self.engine.activate(BASE_VERSION, None)
            self.serving = BASE_VERSION
        self.fallback = (
            f"The active version {wanted} cannot load ({error}); serving {self.serving} instead. "
            "Activate a version that loads (or retrain) to clear this."
        )
        log.error("!" * 72 + "\n%s\n" + "!" * 72, self.fallback)

    def resync(self) -> str:
        """Serve the store's active version again, whatever the engine serves now."""
        self.serving = None
        return self.sync()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.sync()
                except Exception:  # a watcher that dies silently would freeze the version
                    log.exception("Model watcher failed; retrying")

        self.sync()
        self._thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def adapter_checker(engine: Any) -> Any:
    """check(version, path): read the adapter as the engine would serve it (files, shapes against the
    base model) and refuse non-finite weights; raises ModelLoadError."""

    def check(version: str, path: Path) -> None:
        import torch

        deltas = engine.read_adapter(path, version)
        broken = next((name for name, delta in deltas.items() if not torch.isfinite(delta).all()), None)
        if broken is not None:
            raise ModelLoadError(f"Adapter {version} at {path} has infinite or NaN weights ({broken}): retrain it")

    return check


def create_app(
    service: ChatService,
    guard: AdminGuard,
    *,
    training: TrainingController | None = None,
    watcher: ModelWatcher | None = None,
    host_names: set[str] | None = None,
) -> FastAPI:
    """The FastAPI app: HTTP API routes, then the Gradio UI mounted at /.

    With `host_names`, requests whose Host header names another host are refused (UI included).
    """
    from bot.api import HostCheck, add_api
    from bot.ui import CSS, build_ui

    app = FastAPI(
        title="Exemplar",
        description="A chat bot that learns from the answers its users correct.",
        version="0.1.0",
    )
    app.state.service = service
    app.state.watcher = watcher
    add_api(app, service, guard, training=training)
    blocks = build_ui(
        service, guard, training=training, serving_warning=(lambda: watcher.fallback) if watcher else None
    )
    # Uploads need no password (Gradio takes them before any handler runs), so their size is capped.
    max_upload = getattr(service.config, "max_upload_mb", 64) * 1024 * 1024
    app = gr.mount_gradio_app(app, blocks, path="/", footer_links=["api"], css=CSS, max_file_size=max_upload)
    if host_names is not None:
        app.add_middleware(HostCheck, allowed=host_names)
    return app


def warm_few_shot(service: ChatService) -> None:
    """Embed ahead of the first chats (ChatService.warm_few_shot), at a lower CPU priority than the
    threads that answer. Without it, the first few-shot chat after a start waited about 4 s (54 examples)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # this thread only (Linux)
    except (AttributeError, OSError):
        pass
    try:
        started = time.monotonic()
        count = service.warm_few_shot()
        log.info("Few-shot question vectors ready: %d examples in %.1f s", count, time.monotonic() - started)
    except Exception:  # a warm-up that fails costs only speed: the vectors are computed when asked
        log.warning("Few-shot warm-up failed; question vectors will be computed as questions come", exc_info=True)


def build_server(
    engine: ChatEngine,
    store: Store,
    config: Any,
    admin_password: str,
    *,
    training: TrainingController | None = None,
    watch_interval: float = 1.0,
) -> tuple[FastAPI, ModelWatcher]:
    """Wire engine, store and training controller into an app; the watcher is started."""
    if training is not None and hasattr(engine, "read_adapter"):
        # Activation loads the adapter into this engine before the store says it is active.
        training.adapter_check = adapter_checker(engine)
    service = ChatService(engine, store, config)
    watcher = ModelWatcher(engine, store, Path(config.data_dir), interval=watch_interval)
    watcher.start()
    if service.embedder is not None:
        threading.Thread(target=warm_few_shot, args=(service,), name="few-shot-warm", daemon=True).start()
    guard = AdminGuard(
        admin_password, max_failures=config.admin_login_attempts, window_s=config.admin_login_window_s
    )
    app = create_app(service, guard, training=training, watcher=watcher, host_names=config.host_names)
    return app, watcher
