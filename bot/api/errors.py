"""The API's one error shape: JSON `{"error": "..."}` with a 4xx status (a 5xx is a bug), and
pydantic's validation errors turned into one readable message naming each field."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


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
