"""Past chats, kept per browser: the Chat tab's list of conversations to reopen.

Each chat is saved in the browser's local storage (`gr.BrowserState`) as it is
shown: its messages and, aligned with them, the stored message ids (so a reopened
chat's answers can still be rated and corrected). The list comes back from the
browser with every event, so it is untrusted input: `saved_chats` checks and
bounds it before anything uses it.

A reopened chat that goes on is stored as a new conversation (its earlier turns
are the new answers' context): a conversation id read from the browser is never
used, so no client can add messages to a conversation that is not its own.

Beside its messages a chat keeps when it was started, saved and last opened (the
last opened one reopens as the page loads), an optional name given by a rename,
and, for the one chat deleted last, when it was deleted: it stays in the list,
hidden, until the next delete, and can be brought back for UNDO_SECONDS.
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
UNDO_SECONDS = 600  # how long a deleted chat can be brought back
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


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def _stamp(value: Any) -> str:
    """A time from the browser, kept only if it reads as one (ISO 8601), else ""."""
    if not isinstance(value, str):
        return ""
    try:
        datetime.fromisoformat(value[:32])
    except ValueError:
        return ""
    return value[:32]


def _time(stamp: str) -> datetime | None:
    if not stamp:
        return None
    when = datetime.fromisoformat(stamp)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _stamp_now(now: datetime | None) -> str:
    # Milliseconds: a chat opened in the same second as another was saved must still count as the later.
    return _now(now).isoformat(timespec="milliseconds")


def _order(stamp: str) -> datetime:
    """A time to sort by (an undated chat counts as the oldest)."""
    return _time(stamp) or datetime.min.replace(tzinfo=timezone.utc)


def _name(value: Any) -> str:
    """A name given to a chat, on one line and bounded ("" for none)."""
    name = " ".join(value.split()) if isinstance(value, str) else ""
    return name if len(name) <= TITLE_CHARS else name[: TITLE_CHARS - 1] + "…"


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
    updated = _stamp(value.get("updated"))
    name = _name(value.get("name"))
    return {
        "key": value["key"], "title": name or title_of(history), "name": name, "history": history, "ids": ids,
        "created": _stamp(value.get("created")) or updated, "updated": updated,
        "opened": _stamp(value.get("opened")) or updated, "deleted": _stamp(value.get("deleted")),
    }


def saved_chats(value: Any) -> list[dict[str, Any]]:
    """The browser's saved chats, checked (anything malformed is dropped), newest first, bounded.
    The one deleted last is among them, marked `deleted` (see `live`)."""
    if not isinstance(value, list):
        return []
    chats, seen = [], set()
    for item in value[: MAX_CHATS * 2]:
        chat = _chat(item)
        if chat is not None and chat["key"] not in seen:
            seen.add(chat["key"])
            chats.append(chat)
    return chats[:MAX_CHATS]


def live(chats: Any) -> list[dict[str, Any]]:
    """The saved chats that are not deleted: those the list shows."""
    return [c for c in saved_chats(chats) if not c["deleted"]]


def title_of(history: list[dict[str, str]]) -> str:
    """A chat's name in the list: its first question, shortened."""
    first = next((m["content"] for m in history if m["role"] == "user"), "") or "(empty chat)"
    first = " ".join(first.split())
    return first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"


def remember(
    chats: Any, key: str | None, history: list[dict[str, str]], ids: list[int | None],
    now: datetime | None = None,
) -> tuple[str | None, list[dict[str, Any]]]:
    """Save the open chat (made a key if it has none) at the top of the list; an empty chat is not saved.
    Returns (its key, the new list)."""
    chats = saved_chats(chats)
    if not history:
        return key, chats
    key = key if isinstance(key, str) and CHAT_KEY.fullmatch(key) else new_key()
    ids = (list(ids or []) + [None] * len(history))[: len(history)]  # aligned before both are cut
    earlier = next((c for c in chats if c["key"] == key and not c["deleted"]), None)
    stamp = _stamp_now(now)
    chat = _chat({
        "key": key, "history": history[-MAX_MESSAGES:], "ids": ids[-MAX_MESSAGES:],
        "created": earlier["created"] if earlier and earlier["created"] else stamp,
        "name": earlier["name"] if earlier else "", "updated": stamp, "opened": stamp,
    })
    rest = [c for c in chats if c["key"] != key]
    return key, ([chat] if chat else []) + rest[: MAX_CHATS - 1]


def opened(chats: Any, key: str | None, now: datetime | None = None) -> list[dict[str, Any]]:
    """The list with the chat `key` marked as opened now (the last opened one reopens as the page loads)."""
    stamp = _stamp_now(now)
    return [c | {"opened": stamp} if c["key"] == key and not c["deleted"] else c for c in saved_chats(chats)]


def last_opened(chats: Any) -> dict[str, Any] | None:
    """The chat opened (or saved) last, to reopen as the page loads."""
    return max(live(chats), key=lambda c: _order(c["opened"]), default=None)


def rename(chats: Any, key: str | None, name: Any) -> list[dict[str, Any]]:
    """The list with the chat `key` given `name` (an empty name gives it back its first question)."""
    return [_chat(c | {"name": name}) or c if c["key"] == key and not c["deleted"] else c for c in saved_chats(chats)]


def forget(chats: Any, key: str | None, now: datetime | None = None) -> list[dict[str, Any]]:
    """The list with the chat `key` deleted: kept, hidden, until the next delete (see `restore`).
    The chat deleted before it goes for good."""
    stamp = _stamp_now(now)
    return [c | {"deleted": stamp} if c["key"] == key else c for c in saved_chats(chats) if not c["deleted"]]


def deleted(chats: Any, now: datetime | None = None) -> dict[str, Any] | None:
    """The chat deleted last, while it can still be brought back."""
    chat = next((c for c in saved_chats(chats) if c["deleted"]), None)
    when = _time(chat["deleted"]) if chat else None
    if chat is None or when is None or (_now(now) - when).total_seconds() > UNDO_SECONDS:
        return None
    return chat


def restore(chats: Any, now: datetime | None = None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Bring back the chat deleted last, if it was deleted less than UNDO_SECONDS ago.
    Returns (that chat or None, the new list; a chat deleted longer ago goes for good)."""
    chat = deleted(chats, now)
    rest = [c for c in saved_chats(chats) if not c["deleted"]]
    if chat is None:
        return None, rest
    chat = chat | {"deleted": ""}
    older = [c for c in rest if _order(c["updated"]) > _order(chat["updated"])]
    return chat, [*older, chat, *rest[len(older):]]  # back in its place (the list is newest first)


def find(chats: Any, key: str | None) -> dict[str, Any] | None:
    return next((c for c in live(chats) if c["key"] == key), None)


def when(stamp: str) -> str:
    """A chat's date in the list, e.g. "12 Mar 2025 14:05 UTC" (the server cannot know the browser's time zone)."""
    moment = _time(stamp)
    return f"{moment:%d %b %Y %H:%M} UTC" if moment else "undated"


def matches(chat: dict[str, Any], query: Any) -> bool:
    """Whether every word of `query` is in the chat's title or messages (case ignored)."""
    words = query.lower().split() if isinstance(query, str) else []
    text = " ".join([chat["title"], *(m["content"] for m in chat["history"])]).lower()
    return all(word in text for word in words)


def choices(chats: Any, query: Any = "") -> list[tuple[str, str]]:
    """(label, key) pairs for the list, those matching `query`: the title, made distinct from every
    other chat's by a number where two have the same title and minute, the date, and how many answers."""
    shown = live(chats)
    labels: dict[str, str] = {}
    seen: dict[str, int] = {}
    for chat in sorted(shown, key=lambda c: (_order(c["created"]), _order(c["updated"]))):  # the oldest keeps the plain title
        title, date = chat["title"], when(chat["created"])
        seen[title + date] = count = seen.get(title + date, 0) + 1
        labels[chat["key"]] = f"{title} ({count}) · {date}" if count > 1 else f"{title} · {date}"
    out = []
    for chat in shown:
        if matches(chat, query):
            answers = sum(1 for m in chat["history"] if m["role"] == "assistant")
            out.append((f"{labels[chat['key']]} · {answers} answer{'s' if answers != 1 else ''}", chat["key"]))
    return out
