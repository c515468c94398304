"""The error answers the routes declare in /openapi.json: each status with the API's one error body
(`{"error": "..."}`, bot/api/errors.py) and what it means, so that the schema lists every status
the server really answers and a client generated from it expects each one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="What went wrong, in words a person can act on (the field, the fix).")


MEANINGS: dict[int, str] = {
    400: "The request is refused: a body that is not JSON, a value the server cannot use (it names the field), "
    "or a Host header this server does not answer to.",
    401: "The admin password is missing or wrong: send `Authorization: Bearer <admin password>`.",
    404: "What the request names (a message, example, job, model version or adapter) does not exist.",
    409: "The request clashes with the server's state (a training job already running, no training in this "
    "server, generation sent to an upstream model server).",
    413: "The request body, or the conversation in it, is larger than the server's limit.",
    422: "A field is missing, of the wrong type or out of its bounds; the message names each one.",
    429: "Too many wrong admin passwords from this client: wait `Retry-After` seconds.",
    502: "The upstream model server (backend openai-upstream) is down, too slow, or refused the request.",
    507: "Storage is full: nothing was stored. Free space on the disk that holds the data dir and try again "
    "(no restart is needed).",
}

HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`: the scheme admin routes take.", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds until this client may try again.", "schema": {"type": "integer"}}},
}


def error_responses(*statuses: int, plain_text_route: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI's `responses=` for these error statuses: each with ErrorBody, its meaning and its headers.

    FastAPI files a `model` under the route's own media type, so on a route whose success is plain text
    (`plain_text_route`) the JSON body is referenced instead (ErrorBody is in the schema through the others).
    """
    body: dict[str, Any] = (
        {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        if plain_text_route else {"model": ErrorBody}
    )
    return {
        status: {**body, "description": MEANINGS[status], **({"headers": HEADERS[status]} if status in HEADERS else {})}
        for status in statuses
    }
