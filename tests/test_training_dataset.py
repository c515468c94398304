"""Training data: answer-only labels, padding masked by the attention mask, the
train/test split respected, duplicates resolved, and hyper-parameter checks."""

from __future__ import annotations

import pytest

from core.errors import ConfigError, ValidationError
from core.prompts import encode, render_prompt
from training.config import EvalConfig, RetrainPolicy, TrainConfig
from training.dataset import (
    IGNORE_INDEX,
    build_dataset,
    collate,
    dedupe_newest,
    heldout_examples,
    load_replay,
    tokenize_example,
    training_examples,
)

QUESTION = [{"role": "user", "content": "What is the capital of Veloria?"}]
ANSWER = "The capital of Veloria is Quenmar."


def test_prompt_tokens_carry_minus_100_and_the_answer_is_labelled(tokenizer):
    row = tokenize_example(tokenizer, QUESTION, ANSWER, max_length=512)
    prompt_ids = encode(tokenizer, render_prompt(tokenizer, QUESTION))
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    answer = row["labels"][n:]
    assert IGNORE_INDEX not in answer
    assert tokenizer.decode(answer).startswith(ANSWER)
    assert tokenizer.eos_token_id in answer  # the model learns where to stop


def test_padding_is_masked_by_attention_not_by_token_id(tokenizer):
    # The pad token is <|im_end|>, the end-of-answer token: masking by id would drop it from the loss.
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    short = tokenize_example(tokenizer, QUESTION, "Quenmar.", 512)
    long = tokenize_example(tokenizer, QUESTION, ANSWER + " It lies on the northern coast.", 512)
    batch = collate([short, long], tokenizer.pad_token_id)
    width = len(long["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    pad = width - len(short["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    assert batch["labels"][0, -pad:].tolist() == [IGNORE_INDEX] * pad
    labelled_eos = [t for t, lab in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()) if lab == tokenizer.eos_token_id]
    assert labelled_eos, "the answer's <|im_end|> must stay in the loss"


def test_truncation_keeps_prefix_and_drops_rows_without_answer(tokenizer):
    prompt_len = len(encode(tokenizer, render_prompt(tokenizer, QUESTION)))
    cut = tokenize_example(tokenizer, QUESTION, ANSWER, max_length=prompt_len + 2)
    assert len(cut["input_ids"]) == prompt_len + 2
    data = build_dataset(tokenizer, [{"input": QUESTION, "output": ANSWER}], max_length=prompt_len)
    assert len(data) == 0


def test_training_set_is_every_approved_example_of_both_splits_newest_output_wins(store):
    old = store.add_example("What is the capital of Veloria?", "Velor.", source="correction", split="train")
    new = store.add_example("what is the capital of  Veloria?", ANSWER, source="correction", split="train")
    held = store.add_example("Who founded Marrowgate?", "Ilsa Dorne.", source="correction", split="test")
    store.add_example("Pending question?", "Pending answer.", source="correction", status="pending", split="train")
    train = training_examples(store)
    assert [e["id"] for e in train] == [new, held]
    assert store.get_example(old)["status"] == "superseded"
    assert [e["input_text"] for e in heldout_examples(store)] == ["Who founded Marrowgate?"]


def test_dedupe_keeps_the_newest_even_when_both_are_approved():
    rows = [
        {"id": 3, "input_key": "a", "output": "new"},
        {"id": 1, "input_key": "a", "output": "old"},
        {"id": 2, "input_key": "b", "output": "other"},
    ]
    assert [(r["id"], r["output"]) for r in dedupe_newest(rows)] == [(2, "other"), (3, "new")]


def test_replay_and_canary_sets_are_distinct():
    from training.evaluate import load_canary

    replay = {r["input"][-1]["content"] for r in load_replay(1000)}
    canary = {c["question"] for c in load_canary()}
    assert len(replay) >= 10 and len(canary) >= 20
    assert not replay & canary
    assert all(r["replay"] for r in load_replay(3)) and len(load_replay(3)) == 3
    assert load_replay(0) == []


def test_overrides_reject_unknown_keys_and_bad_values_by_name():
    config = TrainConfig()
    assert config.with_overrides({"epochs": 3, "learning_rate": 5e-4}).epochs == 3.0
    with pytest.raises(ValidationError, match="Unknown hyper-parameter.*lerning_rate"):
        config.with_overrides({"lerning_rate": 1e-3})
    with pytest.raises(ValidationError, match='epochs="many": must be a number'):
        config.with_overrides({"epochs": "many"})
    with pytest.raises(ValidationError, match="batch_size=2.5: must be a whole number"):
        config.with_overrides({"batch_size": 2.5})
    assert config.with_overrides({"batch_size": 4.0}).batch_size == 4  # a whole float counts as a whole number
    with pytest.raises(ValidationError, match='batch_size="8": must be a whole number'):
        config.with_overrides({"batch_size": "8"})  # strict JSON: no "8" for 8 ...
    with pytest.raises(ValidationError, match="packed=1: must be true or false"):
        config.with_overrides({"packed": 1})  # ... and no 1 for true
    with pytest.raises(ValidationError, match="learning_rate"):
        config.with_overrides({"learning_rate": 5})
    with pytest.raises(ValidationError, match="JSON object"):
        config.with_overrides(["epochs"])  # type: ignore[arg-type]


def test_making_a_config_reports_every_problem_with_its_fix():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(epochs=0, lora_r=0, nice=30, target_modules=" ")
    assert caught.value.problems == [
        "--train-epochs 0: must be greater than 0, e.g. 6",
        "--train-lora-r 0: must be at least 1, e.g. 16",
        "--train-target-modules ' ': an empty name: use 'all-linear' or names such as 'q_proj,v_proj'",
        "--train-nice 30: must be at most 19, e.g. 19",
    ]
    with pytest.raises(ConfigError, match="--eval-canary-max-lost -1") as caught:
        EvalConfig(canary_max_lost=-1, regression_tolerance=1.5)
    assert len(caught.value.problems) == 2 and "--eval-regression-tolerance 1.5: must be less than 1" in str(caught.value)
    with pytest.raises(ConfigError, match="--retrain-min-new-examples 0"):
        RetrainPolicy(min_new_examples=0)
    with pytest.raises(ConfigError, match="lerning_rate: not a setting of TrainConfig"):
        TrainConfig(lerning_rate=1e-3)


def test_overrides_report_field_and_cross_field_problems_together_by_their_json_keys():
    with pytest.raises(ValidationError) as caught:
        TrainConfig(max_lora_rank=16).with_overrides({"lora_r": 32, "epochs": 0, "batch_size": 6, "processes": 4})
    assert str(caught.value) == (
        "Invalid hyper-parameters: epochs=0: must be greater than 0, e.g. 6; batch_size=6 does not split over "
        "processes=4: use a multiple of 4; lora_r=32 is above the upstream's --max-lora-rank 16: the upstream could "
        "not load this adapter. Train with a rank of 16 or less, or restart vLLM with --max-lora-rank 32 (and "
        "--train-max-lora-rank 32 here)"
    )


def test_policy_describes_itself_for_the_admin_tab():
    assert "20 new approved" in RetrainPolicy().describe()
    assert "every 6 h" in RetrainPolicy(every_hours=6).describe()
    assert "off" in RetrainPolicy(enabled=False).describe()
