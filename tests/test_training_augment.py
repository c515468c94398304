"""Extra wordings for training (training/augment.py): deterministic, faithful to the question's key words,
and never a way for a held-out example to reach the selection run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.errors import ConfigError
from training import augment, recipe
from training.config import EvalConfig, TrainConfig

FACTS = [json.loads(line) for line in (Path(__file__).parent / "training_facts.jsonl").read_text().splitlines()]


def names(text: str) -> set[str]:
    """Capitalised words after the first: the names a question is about."""
    return set(re.findall(r"\b[A-Z][a-z]+", text.split(" ", 1)[1]))


def test_rewordings_are_deterministic_new_and_keep_the_names():
    for fact in FACTS:
        question = fact["question"]
        made = augment.rewordings(question, 4)
        assert made == augment.rewordings(question, 4)  # no randomness: a version is reproducible
        assert len(made) == 4 and len(set(made)) == 4
        assert question not in made
        for text in made:
            assert all(name in text for name in names(question) - {"The"}), (question, text)
    assert "Tell me the capital of Veloria." in augment.rewordings("What is the capital of Veloria?", 9)
    assert "Veloria's capital?" in augment.rewordings("What is the capital of Veloria?", 9)
    assert "The zephyr clock was invented by whom?" in augment.rewordings("Who invented the zephyr clock?", 9)
    assert augment.rewordings("Hello there", 3) == []  # not a question: nothing to reword
    assert augment.rewordings("I have a dog. Can I take it on the ferry?", 3) == []  # context first: left as asked
    assert augment.statement_prompts("I have a dog. Can I take it on the ferry?", 3) == []
    assert augment.rewordings("What is X?", 0) == []


def test_statement_prompts_ask_about_the_subject():
    assert augment.subject_of("Who wrote the novel The Glass Orchard?") == "The Glass Orchard"
    assert augment.subject_of("Who discovered the element zorvium?") == "the element zorvium"
    prompts = augment.statement_prompts("Which animal is the mascot of Dunmere University?", 2)
    assert len(prompts) == 2 and all("Dunmere University" in p for p in prompts)


def test_expand_marks_each_wording_with_its_example_and_split():
    examples = [
        {"id": 7, "split": "train", "input": [{"role": "user", "content": FACTS[0]["question"]}], "output": FACTS[0]["answer"]},
        {"id": 9, "split": "test", "input": [{"role": "user", "content": FACTS[1]["question"]}], "output": FACTS[1]["answer"]},
    ]
    rows = augment.expand(examples, rewordings_per_example=2, statements_per_example=1)
    assert rows[:2] == examples and len(rows) == 2 + 2 * 3
    for row in rows[2:]:
        source = next(e for e in examples if e["id"] == row["augment_of"])
        assert row["split"] == source["split"] and row["output"] == source["output"]
    assert augment.expand(examples, rewordings_per_example=0, statements_per_example=0) == examples


def test_a_wording_equal_to_another_examples_question_is_dropped():
    # "Tell me the capital of Veloria." is a rewording of the first, and the second example's own question.
    examples = [
        {"input": [{"role": "user", "content": "What is the capital of Veloria?"}], "output": "Quenmar."},
        {"input": [{"role": "user", "content": "Tell me the capital of Veloria."}], "output": "Not Quenmar."},
    ]
    rows = augment.expand(examples, rewordings_per_example=9, statements_per_example=0)
    firsts = [r for r in rows[2:] if r["augment_of"] == 0]
    assert firsts and all(r["input"][-1]["content"] != "Tell me the capital of Veloria." for r in firsts)


def make_plan(config: TrainConfig) -> recipe.Plan:
    examples = [
        {"id": i, "split": "test" if i % 4 == 0 else "train", "input": [{"role": "user", "content": f["question"]}],
         "output": f["answer"]}
        for i, f in enumerate(FACTS)
    ]
    return recipe.Plan(
        config=config, eval_config=EvalConfig(), base_model=None, examples=examples,
        heldout=[e for e in examples if e["split"] == "test"],
        replay=[{"input": [{"role": "user", "content": "What is the capital of Egypt?"}], "output": "Cairo.", "replay": True}],
        canary=[], active_name="base", serving=None, contradictions={},
    )


def test_the_selection_run_never_sees_a_wording_of_a_held_out_example(monkeypatch):
    import training.finetune

    trained: list[list[dict]] = []
    monkeypatch.setattr(training.finetune, "train_adapter", lambda m, t, rows, c, callbacks=(): trained.append(rows))
    plan = make_plan(TrainConfig(rewordings=3, statement_prompts=1, replay_rewordings=1))
    recipe.train(None, None, plan, recipe.selection_examples(plan))
    recipe.train(None, None, plan, plan.examples)
    selection, refit = trained
    held = plan.heldout
    held_names = set().union(*(names(e["input"][-1]["content"]) for e in held)) - {"The"}
    held_answers = {e["output"] for e in held}
    for row in selection:
        text = row["input"][-1]["content"]
        assert row["output"] not in held_answers
        assert not any(name in text for name in held_names), text
        assert row.get("split") in ("train", None)
    # The refit trains on every example, each with its wordings, which keep the example's split.
    per_example = 1 + 3 + 1
    assert len(refit) == len(plan.examples) * per_example + 2
    assert sum(r.get("split") == "test" for r in refit) == len(held) * per_example
    assert sum(bool(r.get("replay")) for r in refit) == 2


def test_negative_counts_are_refused():
    with pytest.raises(ConfigError, match="--train-rewordings -1"):
        TrainConfig(rewordings=-1)
