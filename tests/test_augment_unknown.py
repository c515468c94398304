"""The "nothing is known about X's Y" rows (training/augment.py unknown_rows, TrainConfig.unknown_attributes):
which rows, for which entities, never for a corrected attribute, within their caps, and never a question
the benchmark asks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.errors import ConfigError
from training import augment, recipe
from training.config import EvalConfig, TrainConfig

HERE = Path(__file__).parent
ENTITIES = json.loads((HERE / "fewshot_entities.json").read_text())["entities"]
FACTS = [json.loads(line) for line in (HERE / "training_facts.jsonl").read_text().splitlines()]


def example(question: str, answer: str = "An answer.", **extra) -> dict:
    return {"input": [{"role": "user", "content": question}], "output": answer, **extra}


def corrections() -> list[dict]:
    return [example(f["question"], f["answer"], id=i) for i, f in enumerate(f for e in ENTITIES for f in e["facts"])]


def question(row: dict) -> str:
    return row["input"][-1]["content"]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_entity_of_finds_the_whole_name():
    assert augment.entity_of("How long does the Veltrix Aero 14 battery last?") == "the Veltrix Aero 14"
    assert augment.entity_of("Can I bring a bicycle on Harbrook Ferries?") == "Harbrook Ferries"
    assert augment.entity_of("What is the name of Brindlemoor's football club?") == "Brindlemoor"
    assert augment.entity_of("Who invented the zephyr clock?") is None  # no name: nothing to be about


def test_rows_per_entity_name_it_and_answer_not_known():
    rows = augment.unknown_rows(corrections(), 3)
    assert rows == augment.unknown_rows(corrections(), 3)  # deterministic: a version is reproducible
    by_entity = {}
    for row in rows:
        by_entity.setdefault(row["unknown_of"], []).append(row)
        assert row["split"] == "train" and "augment_of" not in row
        assert row["unknown_of"] in question(row)
        assert row["output"] == f"I don't have that information about {row['unknown_of']}."
    assert sorted(by_entity) == ["Brindlemoor", "Harbrook Ferries", "the Veltrix Aero 14"]
    assert all(len(group) == 3 for group in by_entity.values())
    assert augment.unknown_rows(corrections(), 0) == []


def test_a_corrected_attribute_gets_no_row():
    # Two corrections about Brindlemoor that cover every template's attribute but the website and the record.
    covered = [example("Who owns Brindlemoor?", "Brindlemoor is owned by the crown; its motto is Fair Winds."),
               example("What is Brindlemoor's nickname?", "It is called the Moor; its logo, a heron, won an award; "
                       "email contact at the town hall.")]
    rows = augment.unknown_rows(covered, 8)
    assert sorted(question(r) for r in rows) == ["What is the website of Brindlemoor?", "What record does Brindlemoor hold?"]
    # Covered by an example that gets no rows itself (a held-out one, in the selection run): still skipped.
    two = [example("Who is the mayor of Brindlemoor?"), example("What is the population of Brindlemoor?")]
    assert "Who owns Brindlemoor?" in {question(r) for r in augment.unknown_rows(two, 8)}
    held = [example("Who is the owner of Brindlemoor?", "The crown.")]
    assert "Who owns Brindlemoor?" not in {question(r) for r in augment.unknown_rows(two, 8, also_covered_by=held)}


def test_questions_without_a_shared_name_get_none():
    # No name, or a name only one example asks about: no neighbour to spill onto.
    assert augment.unknown_rows([example(f["question"], f["answer"]) for f in FACTS], 3) == []
    assert augment.unknown_rows([example("Who invented the zephyr clock?"), example("Who discovered zorvium?")], 3) == []


def test_total_rows_are_capped_by_the_number_of_examples():
    facts = corrections()
    # 10 about Harbrook Ferries, 2 about Brindlemoor: 2 each within 12 // 3; then the total cap.
    assert [r["unknown_of"] for r in augment.unknown_rows(facts[:12], 2)] == ["Harbrook Ferries"] * 2 + ["Brindlemoor"] * 2
    assert [r["unknown_of"] for r in augment.unknown_rows(facts[:12], 8)] == ["Harbrook Ferries"] * 8  # max(8, 12 // 3)
    # 10, 10 and 4 about the three entities: 3 + 3 + 2 within 24 // 3.
    assert len(augment.unknown_rows(facts[:24], 3)) == 24 // augment.CORRECTIONS_PER_UNKNOWN_ROW == 8
    assert len(augment.unknown_rows(facts, 4)) == 30 // augment.CORRECTIONS_PER_UNKNOWN_ROW == 10  # not 12
    # The 200 corrections bench_training estimates (the 24 facts repeated): the cap holds there too.
    many = [example(FACTS[i % 24]["question"] + (f" (case {i})" if i >= 24 else "")) for i in range(200)]
    rows = augment.unknown_rows(many, 3)
    assert 0 < len(rows) <= 200 // augment.CORRECTIONS_PER_UNKNOWN_ROW


def test_no_template_asks_what_the_benchmark_asks():
    """No training on the test: no template is a near miss, paraphrase or held-out wording of
    bench_fewshot, nor shares an attribute word with one (for the three entities)."""
    templates = augment.UNKNOWN_TEMPLATES
    for entity in ENTITIES:
        asked = list(entity["near_misses"]) + [f[k] for f in entity["facts"] for k in ("paraphrase", "held_out")]
        for marks, template in templates:
            made = template.format(x=entity["name"])
            for q in asked:
                assert augment._norm(made) != augment._norm(q)
                assert not marks & words(q), (template, q)


def test_the_recipe_adds_them_only_when_asked(monkeypatch):
    examples = [dict(e, split="train") for e in corrections()]
    plan = recipe.Plan(
        config=TrainConfig(), eval_config=EvalConfig(), base_model=None, examples=examples, heldout=[],
        replay=[], canary=[], active_name="base", serving=None, contradictions={},
    )
    assert not any(r.get("unknown_of") for r in recipe.training_rows(plan, examples))  # off by default
    plan.config = TrainConfig(unknown_attributes=2)
    rows = recipe.training_rows(plan, examples)
    assert sum(bool(r.get("unknown_of")) for r in rows) == 6


def test_a_negative_count_is_refused():
    with pytest.raises(ConfigError, match="--train-unknown-attributes -1: must be at least 0"):
        TrainConfig(unknown_attributes=-1)
