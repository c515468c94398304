"""The made-up facts the benchmarks store and ask about. They are the tests' fact sets too, so
they stay in tests/ as data files; this module is the one place that knows where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import REPO

FACTS_DIR = REPO / "tests"
# Two more wordings per training fact, written for bench_generalise and never trained on.
FRESH_PARAPHRASES = Path(__file__).resolve().with_name("generalise_paraphrases.jsonl")


def fewshot_facts() -> dict[str, Any]:
    """tests/fewshot_facts.json: 24 facts (question, answer, fact, paraphrases, held_out), and
    the `unrelated` and `near_misses` questions."""
    return json.loads((FACTS_DIR / "fewshot_facts.json").read_text())


def fewshot_entities() -> list[dict[str, Any]]:
    """tests/fewshot_entities.json: 3 entities with 10 corrections each, and near misses about them."""
    return json.loads((FACTS_DIR / "fewshot_entities.json").read_text())["entities"]


def training_facts() -> list[dict[str, Any]]:
    """tests/training_facts.jsonl: the 24 facts the training scenario test teaches."""
    return read_jsonl(FACTS_DIR / "training_facts.jsonl")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
