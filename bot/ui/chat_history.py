"""Past chats, kept per browser: the Chat tab's list of conversations to reopen.

Each chat is saved in the browser's local storage (`gr.BrowserState`) as it is
shown: its messages and, aligned with them, the stored message ids (so a reopened
chat's answers can still be rated and corrected). The list comes back from the
browser with every event, so it is untrusted input: `saved_chats` checks and
bounds it before anything uses it.

A reopened chat that goes on is stored as a new conversation (its earlier turns
are the new answers' context): a conversation id read from the browser is never
used, so no client can add messages to a conversation that is not its own.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any

# Kept newest first; the oldest beyond these go (local storage holds a few MB per site).
MAX_CHATS = 30
MAX_MESSAGES = 200
MAX_CHARS = 20_000
TITLE_CHARS = 48
CHAT_KEY = re.compile(r"[0-9a-f]{32}")
# Gradio encrypts a BrowserState in the page with this key, and sends the key to every page:
# it protects nothing, but a random one (Gradio's default) made each restart of the
# server forget every browser's chats and rater id. A fixed one keeps them.
BROWSER_KEY = "exemplar-browser-state-v1"


def new_key() -> str:
    return uuid.uuid4().hex


def _message(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or value.get("role") not in ("user", "assistant"):
        return None
    content = value.get("content")
    if not isinstance(content, str):
        return None
    return {"role": value["role"], "content": content[:MAX_CHARS]}


def _chat(value: Any) -> dict[str, Any] | None:
    """One saved chat checked: a key, a title, messages and their ids; None if it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("key"), str) or not CHAT_KEY.fullmatch(value["key"]):
        return None
    raw = value.get("history")
    if not isinstance(raw, list):
        return None
    history = [m for m in (_message(v) for v in raw[:MAX_MESSAGES]) if m is not None]
    if len(history) != len(raw[:MAX_MESSAGES]) or not history:
        return None
    raw_ids: list[Any] = value["ids"] if isinstance(value.get("ids"), list) else []
    ids = [i if isinstance(i, int) and not isinstance(i, bool) and i > 0 else None for i in raw_ids[: len(history)]]
    ids += [None] * (len(history) - len(ids))
    updated: str = value["updated"] if isinstance(value.get("updated"), str) else ""
    return {"key": value["key"], "title": title_of(history), "updated": updated[:32], "history": history, "ids": ids}


def saved_chats(value: Any) -> list[dict[str, Any]]:
    """The browser's saved chats, checked (anything malformed is dropped), newest first, bounded."""
    if not isinstance(value, list):
        return []
    chats, seen = [], set()
    for item in value[: MAX_CHATS * 2]:
        chat = _chat(item)
        if chat is not None and chat["key"] not in seen:
            seen.add(chat["key"])
            chats.append(chat)
    return chats[:MAX_CHATS]


def title_of(history: list[dict[str, str]]) -> str:
    """A chat's name in the list: its first question, shortened."""
    first = next((m["content"] for m in history if m["role"] == "user"), "") or "(empty chat)"
    first = " ".join(first.split())
    return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"


def remember(
    chats: Any, key: str | None, history: list[dict[str, str]], ids: list[int | None]
) -> tuple[str | None, list[dict[str, Any]]]:
    """Save the open chat (made a key if it has none) at the top of the list; an empty chat is not saved.
    Returns (its key, the new list)."""
    chats = saved_chats(chats)
    if not history:
        return key, chats
    key = key if isinstance(key, str) and CHAT_KEY.fullmatch(key) else new_key()
    ids = (list(ids or []) + [None] * len(history))[: len(history)]  # aligned before both are cut
    chat = _chat({
        "key": key, "history": history[-MAX_MESSAGES:], "ids": ids[-MAX_MESSAGES:],
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    rest = [c for c in chats if c["key"] != key]
    return key, ([chat] if chat else []) + rest[: MAX_CHATS - 1]


def forget(chats: Any, key: str | None) -> list[dict[str, Any]]:
    """The list without the chat `key`."""
    return [c for c in saved_chats(chats) if c["key"] != key]


def find(chats: Any, key: str | None) -> dict[str, Any] | None:
    return next((c for c in saved_chats(chats) if c["key"] == key), None)


def choices(chats: Any) -> list[tuple[str, str]]:
    """(label, key) pairs for the list: the title and how many answers it has."""
    out = []
    for chat in saved_chats(chats):
        answers = sum(1 for m in chat["history"] if m["role"] == "assistant")
        out.append((f"{chat['title']} · {answers} answer{'s' if answers != 1 else ''}", chat["key"]))
    return out
