"""Database files that no Store has open: checking a copy, counting what it holds, and
telling whether anyone still uses a file before it is replaced (core/backup.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from storage.errors import ConflictError


def check_file(db: str | Path) -> str:
    """SQLite's integrity check of a database file, read-only: 'ok', or the problems found."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "\n".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


def count_rows(db: str | Path) -> dict[str, int]:
    """How many examples, feedback rows, messages and model versions a database file holds."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            table: conn.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("examples", "feedback", "messages", "model_versions")
        }
    finally:
        conn.close()


def ensure_unused(db: str | Path) -> None:
    """Raise ConflictError if any connection (a server, a training job) has the file open."""
    # Leaving WAL mode needs the only connection to the file, so it fails while anyone else has it.
    conn = sqlite3.connect(db, timeout=0)
    try:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:
        mode = "busy"
    finally:
        conn.close()
    if mode != "delete":
        raise ConflictError(f"{db} is in use (is a server or a training job running on it?): stop it, then restore")
