"""The admin password check, shared by the Admin tab and the admin HTTP routes,
with a limit on failed tries so that the password cannot be guessed at speed."""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from core.errors import AuthError, RateLimitError

# Clients remembered at most; beyond it the oldest are forgotten (each is a few bytes).
MAX_TRACKED_CLIENTS = 10_000


def generate_password() -> str:
    """A fresh random admin password, for a loopback server started without one."""
    return secrets.token_urlsafe(12)


class AdminGuard:
    """Checks a supplied admin password in constant time, and refuses every try from a client
    (even a right one) after `max_failures` wrong ones within `window_s` seconds."""

    def __init__(
        self,
        password: str,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not password:
            raise ValueError("an admin password is required")
        self._password = password.encode()
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, supplied: object, client: str = "ui") -> None:
        """Raise AuthError unless `supplied` is the admin password, RateLimitError while `client`
        (an IP address; "ui:" and an address for the Gradio app) has used up its failed tries."""
        if not isinstance(supplied, str) or not supplied:
            raise AuthError("The admin password is required")
        with self._lock:
            now = self._clock()
            failures = self._failures.get(client)
            if failures is not None:
                while failures and failures[0] <= now - self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    wait = max(1, math.ceil(failures[0] + self.window_s - now))
                    raise RateLimitError(
                        f"Too many wrong admin passwords: wait {wait} s before trying again", retry_after=wait
                    )
            if hmac.compare_digest(supplied.encode(), self._password):
                self._failures.pop(client, None)
                return
            if failures is None:
                if len(self._failures) >= MAX_TRACKED_CLIENTS:
                    self._failures.pop(next(iter(self._failures)))
                failures = self._failures[client] = deque()
            failures.append(now)
        raise AuthError("The admin password is wrong")

    def check_bearer(self, header: str | None, client: str = "http") -> None:
        """Check an `Authorization: Bearer <password>` header value."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Admin routes need the header 'Authorization: Bearer <admin password>'")
        self.check(token.strip(), client)
