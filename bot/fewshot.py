"""Few-shot retrieval: approved examples whose input resembles the user's
latest question, to be put into the prompt as demonstrations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage import Store

# Minimum relevance (negated bm25) for an example to be used. Tuned on the
# fact set in tests; keeps unrelated examples out of the prompt.
MIN_SCORE = 1e-6


def retrieve(store: Store, messages: Sequence[dict[str, str]], *, k: int = 3, min_score: float = MIN_SCORE) -> list[dict[str, Any]]:
    """Up to `k` approved examples most relevant to the last user message, best first."""
    if k <= 0:
        return []
    query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return [e for e in store.search_examples(query, limit=k) if e["score"] >= min_score]
