"""The HTTP API (listed in README.md "HTTP API"; schema at /docs), on the same FastAPI app as the UI.

This module wires the routes together and installs the error shape (bot/api/errors.py: every
error is JSON `{"error": "..."}` with a 4xx status; a 5xx is a bug) and the request limits
(bot/api/middleware.py). The routes live in `chat` (OpenAI-compatible chat, feedback), `admin`
(curation, training), `lora` (vLLM's runtime LoRA routes) and `openwebui` (a linked front end's
ratings and corrections).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.api.admin import admin_router
from bot.api.chat import chat_router
from bot.api.errors import describe_validation_errors, error_response
from bot.api.lora import LoraSlots, lora_router
from bot.api.middleware import BodyLimit
from bot.api.openwebui import openwebui_router
from bot.api.responses import error_responses
from bot.auth import AdminGuard
from bot.chat.service import ChatService
from bot.serving.watcher import ModelWatcher
from core.errors import AuthError, ExemplarError, RateLimitError, StorageFullError
from core.training_contract import TrainingController
from storage.errors import DATABASE_FULL, is_storage_full

log = logging.getLogger(__name__)

API_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def add_api(
    app: FastAPI,
    service: ChatService,
    guard: AdminGuard,
    *,
    training: TrainingController | None = None,
    watcher: ModelWatcher | None = None,
    integration: AdminGuard | None = None,
) -> None:
    """Register the routes, the body-size limit and the JSON error handlers on `app`. The `watcher`
    keeps the engine on the store's active version: /healthz reports its fallback, and a request
    naming no loaded adapter goes back to that version. `integration` guards the routes of a linked front
    end (bot/api/openwebui.py): the integration token or the admin password; `guard` when None."""
    integration = integration or guard

    @app.exception_handler(ExemplarError)
    async def domain_error(request: Request, exc: ExemplarError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if isinstance(exc, RateLimitError):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status_code, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = describe_validation_errors(list(exc.errors()))
        content_type = request.headers.get("content-type", "")
        if message == "the request body must be a JSON object" and "json" not in content_type:
            message = f"send the body as JSON with the header 'Content-Type: application/json' (not {content_type!r})"
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        if is_storage_full(exc):  # a full disk met by a write that raised no StorageFullError: not a bug
            log.warning("%s %s: storage is full: %s", request.method, request.url.path, exc)
            return error_response(StorageFullError.status_code, DATABASE_FULL)
        # Reaching this is a bug; the client still gets the one error shape.
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error ({type(exc).__name__}); see the server log")

    app.add_middleware(BodyLimit)

    @app.get("/healthz", tags=["service"], responses=error_responses(400))  # 400: the Host check
    def healthz(request: Request) -> dict[str, Any]:
        """Liveness, the model version now serving, and (with an upstream backend) the upstream's state."""
        health: dict[str, Any] = {"status": "ok", "model_version": service.engine.version}
        if watcher is not None and watcher.fallback:
            health["warning"] = watcher.fallback  # the active version cannot load; another serves
        upstream = service.engine.health()
        if upstream is not None:
            health["upstream"] = upstream
            if upstream["status"] != "ok":
                health["status"] = "degraded"
        return health

    slots = LoraSlots(service.engine, watcher)
    routers = [
        chat_router(service, slots, integration),
        admin_router(service, guard, training),
        lora_router(service, guard, slots),
        openwebui_router(service, integration),
    ]
    for router in routers:
        app.include_router(router)
    api_routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]

    # The UI is mounted at / after these routes, so without this an unknown API
    # path or method would reach Gradio and get its HTML or its error shape.
    @app.api_route("/v1/{rest:path}", methods=API_METHODS, include_in_schema=False)
    @app.api_route("/api/{rest:path}", methods=API_METHODS, include_in_schema=False)
    def no_such_route(request: Request, rest: str) -> JSONResponse:
        path = request.url.path
        allowed = sorted(m for route in api_routes if route.path_regex.match(path) for m in route.methods or ())
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {path}: use {', '.join(allowed)}",
                                  {"Allow": ", ".join(allowed)})
        return error_response(404, f"No such route: {request.method} {path} (the routes are listed at /docs)")
