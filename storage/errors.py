"""The root of Exemplar's domain exceptions. It lives in the lowest layer so
that storage can raise them without importing the rest of the project; the
edges (CLI, Gradio, HTTP) turn them into words for a person."""


class ExemplarError(Exception):
    """A problem that is the user's to fix, not a bug."""

    status_code = 400


class ValidationError(ExemplarError):
    """Input from a user, a file or the network is malformed."""


class NotFoundError(ExemplarError):
    """A referenced record (message, example, version, job) does not exist."""

    status_code = 404


class ConflictError(ExemplarError):
    """The action clashes with the current state (e.g. a training job is already running)."""

    status_code = 409
