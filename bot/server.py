"""One server for everything: the wiring. The engine, the store and the training controller
go into the chat service; the HTTP API and the Gradio UI (mounted at /) go on one FastAPI app;
a watcher (bot/serving/watcher.py) hot-swaps the adapter when the active version changes."""

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

from bot.auth import AdminGuard  # noqa: E402
from bot.chat.service import ChatService  # noqa: E402
from bot.serving.contracts import ChatEngine  # noqa: E402
from bot.serving.watcher import ModelWatcher  # noqa: E402
from core.training_contract import TrainingController  # noqa: E402
from storage import Store  # noqa: E402

log = logging.getLogger(__name__)


def create_app(
    service: ChatService,
    guard: AdminGuard,
    *,
    training: TrainingController | None = None,
    watcher: ModelWatcher | None = None,
    host_names: set[str] | None = None,
    integration: AdminGuard | None = None,
) -> FastAPI:
    """The FastAPI app: HTTP API routes, then the Gradio UI mounted at /.

    With `host_names`, requests whose Host header names another host are refused (UI included).
    """
    from bot.api.app import add_api
    from bot.api.middleware import HostCheck
    from bot.ui.app import CSS, PAGE_SCRIPT, build_ui

    app = FastAPI(
        title="Exemplar",
        description="A chat bot that learns from the answers its users correct.",
        version="0.1.0",
    )
    add_api(app, service, guard, training=training, watcher=watcher, integration=integration)
    blocks = build_ui(
        service, guard, training=training, serving_warning=(lambda: watcher.fallback) if watcher else None
    )
    # Uploads need no password (Gradio takes them before any handler runs), so their size is capped.
    max_upload = service.config.max_upload_mb * 1024 * 1024
    app = gr.mount_gradio_app(
        app, blocks, path="/", footer_links=["api"], css=CSS, head=PAGE_SCRIPT, max_file_size=max_upload
    )
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


def uvicorn_options(config: Any) -> dict[str, Any]:
    """How uvicorn serves the app for `config` (a ServeConfig): its address, and which proxies' forwarded
    headers it believes. uvicorn itself believes any loopback client's X-Forwarded-For, so a client on this
    host could claim a new address with every wrong admin password and never meet the login limit: here
    only the proxies named in --forwarded-allow-ips are believed, and none by default."""
    proxies = config.forwarded_allow_ips.strip()
    return {
        "host": config.host,
        "port": config.port,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies,  # never None: uvicorn would read $FORWARDED_ALLOW_IPS or trust loopback
        "log_level": "warning",
        # An open browser tab holds a streaming connection; without a limit a SIGTERM (or Ctrl-C)
        # would wait for it forever.
        "timeout_graceful_shutdown": 3,
    }


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
    local = engine.local_model()
    if training is not None and local is not None:
        # Activation loads the adapter into this engine before the store says it is active.
        training.adapter_check = local.check_adapter
    service = ChatService(engine, store, config)
    watcher = ModelWatcher(engine, store, Path(config.data_dir), interval=watch_interval)
    watcher.start()
    if service.embedder is not None:
        threading.Thread(target=warm_few_shot, args=(service,), name="few-shot-warm", daemon=True).start()
    guard = AdminGuard(
        admin_password, max_failures=config.admin_login_attempts, window_s=config.admin_login_window_s
    )
    # The routes of a linked front end (Open WebUI) take its own token too, never the admin routes.
    integration = AdminGuard(
        admin_password, also=(token,) if (token := getattr(config, "integration_token", None)) else (),
        secret_name="integration token (or the admin password)", secret_plural="integration tokens",
        max_failures=config.admin_login_attempts, window_s=config.admin_login_window_s,
    )
    app = create_app(
        service, guard, training=training, watcher=watcher, host_names=config.host_names, integration=integration
    )
    return app, watcher
