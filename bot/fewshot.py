"""Few-shot retrieval: approved examples whose question resembles the user's
latest one, to be put into the prompt as demonstrations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage import Store

# The least relevance (see storage/search.py: a rarity-weighted cosine of
# content words, 0 to 1) for an example to be used. Measured with
# scripts/measure_retrieval.py on tests/fewshot_facts.json.
MIN_SCORE = 0.3


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
    return [e for e in store.search_examples(latest_question(messages), limit=k) if e["score"] >= min_score]
