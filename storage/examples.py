"""The rules an example obeys before it is stored: normalised text, a valid
conversation and output, the key that makes equal inputs equal, and the
stable train/test split derived from that key. No SQL here: store.py applies
these rules, and formats.py and the chat service check input with them too."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from storage.errors import ValidationError
from storage.text import check_text
from storage.vocabulary import Role, Split

# Share of examples held out for evaluation. The split is derived from a hash
# of the input, so it is stable and a duplicate input never straddles splits.
TEST_SHARE_PERCENT = 20
MAX_OUTPUT_CHARS = 20_000


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> Any:
    """`value` if it is one of `allowed`; else ValidationError naming the setting and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValidationError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def normalise_text(text: str) -> str:
    """Trim, unify line endings and collapse runs of spaces; keeps paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def validate_messages(messages: Any, *, what: str = "input") -> list[dict[str, str]]:
    """Check a chat-message list and return it normalised; raise ValidationError naming the problem."""
    if isinstance(messages, str):
        messages = [{"role": Role.USER.value, "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise ValidationError(f"{what} must be a non-empty list of chat messages or a string")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValidationError(f"{what}[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        check_choice(f"{what}[{i}].role", role, Role)
        if not isinstance(content, str):
            raise ValidationError(f"{what}[{i}].content must be a string")
        check_text(content, f"{what}[{i}].content")
        clean.append({"role": Role(role).value, "content": normalise_text(content)})
    if clean[-1]["role"] != Role.USER:
        raise ValidationError(f"{what} must end with a user message")
    if not clean[-1]["content"]:
        raise ValidationError(f"{what}: the last user message is empty")
    return clean


MAX_KEEP_TURNS = 10_000


def count_turns(messages: Sequence[dict[str, str]]) -> int:
    """The user turns in a conversation (each with the answer that followed it)."""
    return sum(1 for m in messages if m["role"] == Role.USER)


def keep_last_turns(messages: Sequence[dict[str, str]], keep: Any) -> list[dict[str, str]]:
    """An example's input with only its last `keep` user turns (and the answers between them);
    a leading system prompt stays. Raise ValidationError for a count that is not a whole number from 1."""
    if isinstance(keep, float) and keep.is_integer():
        keep = int(keep)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP_TURNS:
        raise ValidationError(f"keep_turns must be a whole number of turns from 1, not {keep!r}")
    if keep >= count_turns(messages):
        return [dict(m) for m in messages]  # nothing to trim
    system = [m for m in messages[:1] if m["role"] == Role.SYSTEM]
    starts = [i for i, m in enumerate(messages) if m["role"] == Role.USER]
    return [*system, *[dict(m) for m in messages[starts[-keep]:]]]


def validate_output(output: Any, *, what: str = "output", limit: int = MAX_OUTPUT_CHARS) -> str:
    """Check an example's output and return it normalised; raise ValidationError naming the problem."""
    if not isinstance(output, str):
        raise ValidationError(f"{what} must be a string")
    output = normalise_text(check_text(output, what))
    if not output:
        raise ValidationError(f"{what} is empty")
    if len(output) > limit:
        raise ValidationError(f"{what} is {len(output)} characters; the limit is {limit}")
    return output


def input_key(messages: Sequence[dict[str, str]]) -> str:
    """A hash of a normalised input conversation: equal inputs have equal keys."""
    canonical = json.dumps(
        [[m["role"], normalise_text(m["content"]).casefold()] for m in messages], ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def split_for(key: str) -> Split:
    """The stable default split of an input key."""
    return Split.TEST if int(key[:8], 16) % 100 < TEST_SHARE_PERCENT else Split.TRAIN
