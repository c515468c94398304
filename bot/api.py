"""The HTTP API (listed in README.md "HTTP API"; schema at /docs), on the same FastAPI app as the UI.

This module wires the routes together and owns the error shape: every error is
JSON `{"error": "..."}` with a 4xx status (a 5xx is a bug). The routes live in
`api_chat` (OpenAI-compatible chat, feedback) and `api_admin` (curation, training).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.admin import AdminGuard
from bot.api_admin import admin_router
from bot.api_chat import chat_router
from bot.api_lora import LoraSlots, lora_router
from bot.contracts import TrainingController
from bot.service import ChatService
from core.errors import AuthError, ExemplarError, RateLimitError, ValidationError
from storage.text import MAX_JSON_DEPTH, check_json

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Request bodies above these sizes answer 413 before any parsing.
MAX_BODY_BYTES = 1 * MiB
MAX_IMPORT_BYTES = 64 * MiB
API_PREFIXES = ("/v1/", "/api/")
IMPORT_PATH = "/api/examples/import"
API_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """Turn pydantic's error list into (status, one readable message naming each field)."""
    invalid_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid_json is not None:
        detail = invalid_json.get("ctx", {}).get("error", "")
        return 400, f"The request body is not valid JSON{': ' + str(detail) if detail else ''}"
    by_field: dict[str, list[str]] = {}
    for e in errors:
        # Union branches show up in the location as type tags ("str", "list[TextPart]"): drop them.
        loc = list(e.get("loc", ()))
        if loc and loc[0] in ("body", "path", "query", "header"):
            loc = loc[1:]
        loc = [str(p) for p in loc if not _is_type_tag(p)]
        where = ".".join(loc) if loc else "body"
        if where == "body" and e.get("type") == "missing":
            message = "the request body is missing: send a JSON object"
        elif where == "body" and e.get("type") in ("model_attributes_type", "dict_type"):
            message = "the request body must be a JSON object"
        else:
            message = e.get("msg", "invalid value")
        by_field.setdefault(where, [])
        message = message.removeprefix("Value error, ")
        if message not in by_field[where]:
            by_field[where].append(message)
    parts = [msgs[0] if where == "body" else f"{where}: {' or '.join(msgs)}" for where, msgs in by_field.items()]
    return 422, "; ".join(parts)


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "none") or "[" in part or part.startswith("constrained-")
    )


def json_body_problem(body: bytes) -> tuple[int, str] | None:
    """(status, message) when a JSON body nests too deep or holds invalid Unicode, else None.

    Checked here, before FastAPI and pydantic see the body, so every route refuses
    the same hostile input the same way; malformed JSON is left to FastAPI's own message.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        return 422, f"The request body is nested more than {MAX_JSON_DEPTH} levels deep"
    except ValueError:  # not JSON (or not UTF-8): FastAPI answers that
        return None
    try:
        check_json(value, what="")
    except ValidationError as exc:
        return 422, str(exc)
    return None


class BodyLimit:
    """ASGI middleware: reads an API request's body up to a limit, answering 413 beyond it,
    and refuses JSON bodies that nest too deep or hold invalid Unicode.

    Content-Length is checked first; a chunked body is counted as it arrives, so a
    client cannot stream past the limit either. Non-API paths (the UI) pass untouched.
    """

    def __init__(self, app: ASGIApp, limit: int | None = None, import_limit: int | None = None):
        self.app = app
        self.limit = limit or MAX_BODY_BYTES
        self.import_limit = import_limit or MAX_IMPORT_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_PREFIXES) or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        limit = self.import_limit if path.rstrip("/") == IMPORT_PATH else self.limit
        too_big = error_response(413, f"The request body is larger than the limit of {limit} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_big(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await too_big(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
        if body and b"json" in content_type and limit == self.limit:
            problem = json_body_problem(body)
            if problem is not None:
                await error_response(*problem)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


def host_name(value: bytes | None) -> str:
    """The host of a Host header, lower case and without its port ('[::1]:7860' -> '[::1]')."""
    text = (value or b"").decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class HostCheck:
    """ASGI middleware: refuses requests whose Host header names a host this server is not.

    A DNS-rebinding page (evil.example resolving to 127.0.0.1) reaches a loopback server
    with its own name in the Host header; refusing that name keeps it out of the UI and
    the API alike. Wraps the whole app, so Gradio's own routes are covered too.
    """

    def __init__(self, app: ASGIApp, allowed: set[str]):
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            name = host_name(dict(scope.get("headers", [])).get(b"host"))
            if name not in self.allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                message = (
                    f"This server does not answer to the host name {name!r}: use "
                    f"{', '.join(sorted(self.allowed))}, or start it with --allowed-hosts {name or 'NAME'}"
                )
                await error_response(400, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def add_api(app: FastAPI, service: ChatService, guard: AdminGuard, *, training: TrainingController | None = None) -> None:
    """Register the routes, the body-size limit and the JSON error handlers on `app`."""

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
        # Reaching this is a bug; the client still gets the one error shape.
        log.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal error ({type(exc).__name__}); see the server log")

    app.add_middleware(BodyLimit)

    @app.get("/healthz", tags=["service"])
    def healthz(request: Request) -> dict[str, Any]:
        """Liveness, the model version now serving, and (with an upstream backend) the upstream's state."""
        health: dict[str, Any] = {"status": "ok", "model_version": service.engine.version}
        watcher = getattr(request.app.state, "watcher", None)
        if getattr(watcher, "fallback", None):
            health["warning"] = watcher.fallback  # the active version cannot load; another serves
        upstream_health = getattr(service.engine, "health", None)
        if upstream_health is not None:
            health["upstream"] = upstream_health()
            if health["upstream"]["status"] != "ok":
                health["status"] = "degraded"
        return health

    slots = LoraSlots(service.engine, getattr(app.state, "watcher", None))
    routers = [chat_router(service, slots), admin_router(service, guard, training), lora_router(service, guard, slots)]
    for router in routers:
        app.include_router(router)
    api_routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]

    # The UI is mounted at / after these routes, so without this an unknown API
    # path or method would reach Gradio and get its HTML or its error shape.
    @app.api_route("/v1/{rest:path}", methods=API_METHODS, include_in_schema=False)
    @app.api_route("/api/{rest:path}", methods=API_METHODS, include_in_schema=False)
    def no_such_route(request: Request, rest: str) -> JSONResponse:
        path = request.url.path
        allowed = sorted(method for route in api_routes if route.path_regex.match(path) for method in route.methods)
        if allowed:
            return error_response(405, f"{request.method} is not allowed on {path}: use {', '.join(allowed)}",
                                  {"Allow": ", ".join(allowed)})
        return error_response(404, f"No such route: {request.method} {path} (the routes are listed at /docs)")
