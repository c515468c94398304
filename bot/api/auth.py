"""The admin password as a FastAPI dependency, for every admin route (bot/auth.py checks it)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bot.auth import AdminGuard

# Declares the bearer scheme in /openapi.json; the check itself is AdminGuard's (it also limits wrong tries).
BEARER = HTTPBearer(auto_error=False, description="The admin password.")


def admin_dependency(guard: AdminGuard) -> Callable[..., None]:
    """A dependency that lets a request through only with `Authorization: Bearer <admin password>`."""

    def require_admin(request: Request, _: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:
        guard.check_bearer(request.headers.get("authorization"), request.client.host if request.client else "http")

    return require_admin
