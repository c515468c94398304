"""Few-shot retrieval: approved examples whose question resembles the user's
latest one, to be put into the prompt as demonstrations. The ranking and its
threshold are storage/search.py's; prompts are built by core/prompts.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage import Store
from storage.search import MIN_SCORE  # the threshold lives with the ranking it applies to


def latest_question(messages: Sequence[dict[str, str]]) -> str:
    """The text of the last user message ('' if there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def retrieve(
    store: Store, messages: Sequence[dict[str, str]], *, k: int = 3, min_score: float = MIN_SCORE
) -> list[dict[str, Any]]:
    """Up to `k` approved examples relevant to the user's latest question, most relevant first.

    Each has a `score`; none scores below `min_score`, so an unrelated
    question gets no examples at all.
    """
    if k <= 0:
        return []
    return store.search_examples(latest_question(messages), limit=k, min_score=min_score)
