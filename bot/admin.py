"""The admin password check, shared by the Admin tab and the admin HTTP routes."""

from __future__ import annotations

import hmac
import secrets

from core.errors import AuthError


def generate_password() -> str:
    """A fresh random admin password, for a loopback server started without one."""
    return secrets.token_urlsafe(12)


class AdminGuard:
    """Checks a supplied admin password in constant time."""

    def __init__(self, password: str):
        if not password:
            raise ValueError("an admin password is required")
        self._password = password.encode()

    def check(self, supplied: object) -> None:
        """Raise AuthError unless `supplied` is the admin password."""
        if not isinstance(supplied, str) or not supplied:
            raise AuthError("The admin password is required")
        if not hmac.compare_digest(supplied.encode(), self._password):
            raise AuthError("The admin password is wrong")

    def check_bearer(self, header: str | None) -> None:
        """Check an `Authorization: Bearer <password>` header value."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Admin routes need the header 'Authorization: Bearer <admin password>'")
        self.check(token.strip())
