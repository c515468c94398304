"""Whether the process that owns a row (an import's, a job's) is still running: the one answer
storage and training both use, so they never disagree about a dead owner."""

from __future__ import annotations

import psutil


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id is running. A zombie counts as dead: it has exited and only
    waits for its parent to collect its exit status."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
