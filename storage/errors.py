"""The root of Exemplar's domain exceptions. It lives in the lowest layer so
that storage can raise them without importing the rest of the project; the
edges (CLI, Gradio, HTTP) turn them into words for a person."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


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


class StorageFullError(ExemplarError):
    """The disk (or the database's size limit) is full, so nothing was written; the operator frees
    space and the next write succeeds, with no restart. HTTP 507 Insufficient Storage."""

    status_code = 507


# What "no space" looks like: the database's SQLITE_FULL (a full disk, or PRAGMA max_page_count
# reached), and a file write's ENOSPC or EDQUOT (a user's disk quota).
SQLITE_FULL = 13
FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
DATABASE_FULL = (
    "storage is full: nothing was stored; free space on the disk that holds the data dir, then try again "
    "(no restart is needed)"
)


def file_full_message(path: object) -> str:
    """The message for a file that could not be written for lack of space."""
    return f"storage is full: {path} could not be written; free space on the disk that holds it, then try again"


def is_storage_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, says the disk is full.

    The chain matters: a failed ROLLBACK after SQLITE_FULL carries the SQLITE_FULL as its context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)  # extended codes keep the primary in the low byte
            if (code & 0xFF) == SQLITE_FULL if code is not None else "database or disk is full" in str(exc):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def refuse_when_full(message: str = DATABASE_FULL) -> Iterator[None]:
    """Turn a full disk met inside the block into StorageFullError(`message`); other errors pass unchanged."""
    try:
        yield
    except StorageFullError:
        raise
    except Exception as exc:
        if is_storage_full(exc):
            raise StorageFullError(message) from exc
        raise
