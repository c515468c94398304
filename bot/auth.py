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
        also: tuple[str, ...] = (),
        secret_name: str = "admin password",
        secret_plural: str = "admin passwords",
        max_failures: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not password:
            raise ValueError("an admin password is required")
        # `also`: further secrets this guard takes, e.g. the integration token beside the admin password.
        self._secrets = [password.encode(), *(s.encode() for s in also if s)]
        self.secret_name, self.secret_plural = secret_name, secret_plural
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, supplied: object, client: str = "ui") -> None:
        """Raise AuthError unless `supplied` is the admin password, RateLimitError while `client`
        (an IP address; "ui:" and an address for the Gradio app) has used up its failed tries."""
        if not isinstance(supplied, str) or not supplied:
            raise AuthError(f"The {self.secret_name} is required")
        with self._lock:
            now = self._clock()
            failures = self._failures.get(client)
            if failures is not None:
                while failures and failures[0] <= now - self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    wait = max(1, math.ceil(failures[0] + self.window_s - now))
                    raise RateLimitError(
                        f"Too many wrong {self.secret_plural}: wait {wait} s before trying again",
                        retry_after=wait,
                    )
            # Every secret is compared, so the time taken says nothing about which one came close.
            if sum(hmac.compare_digest(supplied.encode(), secret) for secret in self._secrets):
                self._failures.pop(client, None)
                return
            if failures is None:
                if len(self._failures) >= MAX_TRACKED_CLIENTS:
                    self._failures.pop(next(iter(self._failures)))
                failures = self._failures[client] = deque()
            failures.append(now)
        raise AuthError(f"The {self.secret_name} is wrong")

    def bearer_matches(self, header: str | None) -> bool:
        """Whether an `Authorization: Bearer …` value holds one of the secrets, for a route that serves
        anyone and does a little more for the holder (it counts no failure: a client that sends another
        key, as OpenAI clients do, is no guesser)."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return bool(sum(hmac.compare_digest(token.strip().encode(), secret) for secret in self._secrets))

    def check_bearer(self, header: str | None, client: str = "http") -> None:
        """Check an `Authorization: Bearer <password>` header value."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(f"This route needs the header 'Authorization: Bearer <{self.secret_name}>'")
        self.check(token.strip(), client)
