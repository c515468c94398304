"""ASGI middleware in front of every route: request-body limits (and hostile JSON refused before
any parsing), and the Host-header check that keeps DNS-rebinding pages out."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.api.errors import error_response
from core.errors import ValidationError
from storage.text import MAX_JSON_DEPTH, check_json

MiB = 1024 * 1024
# Request bodies above these sizes answer 413 before any parsing.
MAX_BODY_BYTES = 1 * MiB
MAX_IMPORT_BYTES = 64 * MiB
API_PREFIXES = ("/v1/", "/api/")
IMPORT_PATH = "/api/examples/import"


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
