"""Domain exceptions. Each carries a message a person can act on; the edges
(CLI, Gradio, HTTP) turn them into an exit code, a gr.Error or a JSON 4xx."""

from storage.errors import ConflictError, ExemplarError, NotFoundError, StorageFullError, ValidationError

__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "ExemplarError",
    "ModelLoadError",
    "NotFoundError",
    "RateLimitError",
    "StorageFullError",
    "TooLargeError",
    "ValidationError",
]


class ConfigError(ExemplarError):
    """One or more settings are invalid; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class ModelLoadError(ExemplarError):
    """The base model or an adapter cannot be found or loaded."""


class AuthError(ExemplarError):
    """The admin password is missing or wrong."""

    status_code = 401


class RateLimitError(ExemplarError):
    """Too many failed admin logins from one client; try again after `retry_after` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class TooLargeError(ValidationError):
    """A request is larger than the server's configured limit (a conversation's length or turns)."""

    status_code = 413
