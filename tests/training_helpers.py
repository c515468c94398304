"""Helpers for the training tests: a tiny Llama saved as a base-model folder
(with the real tokenizer, so the chat template is the bundled model's), and
waiting on jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.tiny_llama import tiny_llama

FAST_EVAL = dict(max_new_tokens=8, canary_max_new_tokens=4, max_heldout=8)


def save_tiny_base(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def wait_for(predicate: Any, timeout: float = 120, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def add_facts(store: Any, pairs: list[tuple[str, str]], split: str) -> list[int]:
    return [store.add_example(q, a, source="admin", split=split) for q, a in pairs]


def learnable_tiny_llama(tokenizer: Any) -> Any:
    """A 2-layer Llama that LoRA can teach a few answers in tens of steps.

    conftest's tiny_model (hidden 32, initializer range 0.02) starts with near-uniform
    logits that a LoRA barely moves; larger initial weights make its outputs learnable.
    """
    return tiny_llama(tokenizer, hidden_size=64, intermediate_size=128, initializer_range=0.2)
