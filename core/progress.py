"""A training job's progress drawn as text, the same in the CLI and the Admin tab."""

from __future__ import annotations


def bar(fraction: float | None, width: int = 30) -> str:
    """A bar of `width` blocks, filled to `fraction` (0 to 1; clamped, None counts as 0)."""
    filled = int(round(max(0.0, min(1.0, fraction or 0.0)) * width))
    return "█" * filled + "░" * (width - filled)


def clock(seconds: float | None, unknown: str = "--:--") -> str:
    """Seconds as m:ss, or `unknown` when there is no estimate."""
    if seconds is None:
        return unknown
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
