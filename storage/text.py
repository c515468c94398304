"""Checks on text and JSON from outside (network, files, the UI), shared by the
store's validators and the HTTP edge, so every path refuses the same things."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from storage.errors import ValidationError

# A lone surrogate is a valid Python str but not Unicode: it cannot be encoded as
# UTF-8, so SQLite, the tokenizer and json.dumps(ensure_ascii=False) all fail on it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Deeper JSON than any real request or example file; past it Python's recursive
# encoders and decoders (json, repr) run out of stack.
MAX_JSON_DEPTH = 64
# A rating's tags: at most this many, each at most TAG_CHARS characters.
MAX_TAGS = 10
TAG_CHARS = 50
# A rating's optional score runs from 1 to MAX_SCORE, as Open WebUI's does.
MAX_SCORE = 10


def check_text(text: str, what: str) -> str:
    """Return `text` if it is encodable Unicode; raise ValidationError naming `what` otherwise."""
    match = _SURROGATE.search(text)
    if match is not None:
        raise ValidationError(
            f"{what} holds invalid Unicode (a lone surrogate U+{ord(match.group()):04X} at character "
            f"{match.start()}): send UTF-8 text"
        )
    if "\x00" in text:
        raise ValidationError(f"{what} holds a NUL character (U+0000 at character {text.index(chr(0))})")
    return text


def check_json(value: Any, what: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Check a decoded JSON value: nesting at most `max_depth` deep and every string (keys
    included) valid Unicode. Iterative, so a hostile document cannot exhaust the stack here."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            check_text(item, _where(what, path))
        elif isinstance(item, (dict, list)):
            if len(path) >= max_depth:
                raise ValidationError(f"{_where(what, path)} is nested more than {max_depth} levels deep")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    check_text(key, f"a key in {_where(what, path)}")
                stack.append((child, (*path, key)))
    return value


def _where(what: str, path: tuple[Any, ...]) -> str:
    """'messages.0.content' from a path of keys (long keys shortened: they come from the sender)."""
    parts = [what] if what else []
    parts += [str(k) if len(str(k)) <= 40 else str(k)[:37] + "..." for k in path]
    return ".".join(parts) or "body"


def ascii_int(text: str, what: str) -> int:
    """An integer written with ASCII digits only (str.isdigit also accepts '²' and '٣')."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValidationError(f"{what} must be a number written with the digits 0-9, not {text!r}")
    return int(text)


def check_tags(tags: Sequence[str] | None) -> list[str] | None:
    """A rating's tags, stripped, empty ones and repeats dropped (None for none), or a ValidationError."""
    if tags is None:
        return None
    if isinstance(tags, str) or not isinstance(tags, Sequence) or len(tags) > MAX_TAGS:
        raise ValidationError(f"tags must be a list of at most {MAX_TAGS} short texts")
    kept: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or len(tag.strip()) > TAG_CHARS:
            raise ValidationError(f"each tag must be a text of at most {TAG_CHARS} characters")
        tag = " ".join(check_text(tag, "tag").split())
        if tag and tag.lower() not in (k.lower() for k in kept):
            kept.append(tag)
    return kept or None


def check_score(score: int | None) -> int | None:
    """A rating's score: a whole number from 1 to MAX_SCORE, or None; else a ValidationError."""
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= MAX_SCORE:
        raise ValidationError(f"score must be a whole number from 1 to {MAX_SCORE}, not {score!r}")
    return score
