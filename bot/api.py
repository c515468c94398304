"""The HTTP API (see DESIGN.md "Public interface"), on the same FastAPI app as the UI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bot.admin import AdminGuard
from bot.service import ChatService
from core.errors import ExemplarError


def add_api(app: FastAPI, service: ChatService, guard: AdminGuard, *, trainer: Any = None) -> None:
    """Register the routes and the JSON error handlers on `app`."""

    @app.exception_handler(ExemplarError)
    async def domain_error(request: Request, exc: ExemplarError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness, and the model version now serving."""
        return {"status": "ok", "model_version": service.engine.version}
