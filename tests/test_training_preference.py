"""The preference stages on TRL's trainers (training/preference.py), on a tiny Llama: a DPO stage raises the
chosen-minus-rejected margin of its pairs, a KTO stage makes a downvoted answer less likely than the adapter SFT
left, the data minimums are refused in words, and a job with objective sft+kto is trained, evaluated and gated
like any other."""

from __future__ import annotations

import pytest

from core.errors import ValidationError
from storage import Store
from tests.training_helpers import FAST_EVAL, learnable_tiny_llama, save_tiny_base
from training import preference
from training.config import EvalConfig, TrainConfig
from training.evaluate import answer_logprobs_per_token, margins
from training.finetune import train_adapter

FAST = dict(learning_rate=2e-2, batch_size=4, replay_examples=0, target_modules="all-linear", warmup_steps=0,
            bf16=False, rewordings=0, statement_prompts=0)


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


CORRECTIONS = [
    {"id": i + 1, "input": ask(f"Which key opens door {n}?"), "output": f"The {colour} key.", "rejected": "No key."}
    for i, (n, colour) in enumerate([(1, "red"), (2, "blue"), (3, "green"), (4, "amber")])
]
DOWNVOTED = [{"message_id": 9, "input": ask("Which key opens the cellar?"), "answer": "The cellar has no door.",
              "reasons": ["wrong fact"]}]


def test_each_objective_names_what_its_data_lacks():
    upvoted = [{**e, "rejected": None} for e in CORRECTIONS]
    with pytest.raises(ValueError, match="sft\\+dpo needs at least one approved correction with the answer it replaced"):
        preference.check_minimum("sft+dpo", upvoted, DOWNVOTED)
    with pytest.raises(ValueError, match="sft\\+kto needs at least one undesirable answer"):
        preference.check_minimum("sft+kto", upvoted, [])
    preference.check_minimum("sft+kto", upvoted, DOWNVOTED)  # a thumbs-down is enough for KTO
    preference.check_minimum("sft+dpo", CORRECTIONS, [])
    preference.check_minimum("sft", [], [])
    rows = preference.unpaired(CORRECTIONS, DOWNVOTED)
    assert sum(r["label"] for r in rows) == 4 and sum(not r["label"] for r in rows) == 5
    good, bad = preference.kto_weights(rows)
    assert 1 <= good * 4 / (bad * 5) <= 4 / 3  # TRL's documented range for the weighted ratio


def test_the_rows_are_the_text_training_and_serving_render(tokenizer):
    from training.dataset import tokenize_example

    [row] = preference.dataset_rows(tokenizer, "sft+dpo", CORRECTIONS[:1], [], seed=0)
    ours = tokenize_example(tokenizer, CORRECTIONS[0]["input"], CORRECTIONS[0]["output"], 512)["input_ids"]
    theirs = tokenizer(row["prompt"] + row["chosen"], add_special_tokens=False)["input_ids"]
    assert theirs == ours[: len(theirs)] and len(ours) - len(theirs) <= 1  # all but the template's last newline
    assert row["chosen"].endswith(tokenizer.eos_token) and row["rejected"].startswith("No key.")


def stage_from(sft: dict, model, tokenizer, objective: str, downvoted: list, replay=(), **settings):
    """`objective`'s stage on CORRECTIONS, started from the SFT adapter state `sft` (tiny-model settings)."""
    from training.recipe import restore_adapter_state

    restore_adapter_state(model, sft)
    config = TrainConfig(**FAST, objective=objective, preference_epochs=8, preference_learning_rate=1e-2, **settings)
    return preference.train_preferences(model, tokenizer, objective, CORRECTIONS, downvoted, config, replay=replay)


@pytest.mark.slow  # an SFT run and two KTO stages on a tiny model
def test_the_replay_term_holds_general_answers_to_the_base_model_during_a_kto_stage(tokenizer):
    from training.recipe import adapter_state

    replay = [{"input": ask(q), "output": a} for q, a in [("What colour is the sky?", "The sky is blue."),
                                                          ("How many legs has a cat?", "A cat has four legs.")]]
    pairs = [(r["input"], r["output"]) for r in replay]
    model, _ = train_adapter(learnable_tiny_llama(tokenizer), tokenizer, CORRECTIONS, TrainConfig(max_steps=10, **FAST))
    with model.disable_adapter():
        base = answer_logprobs_per_token(model, tokenizer, pairs, max_length=512, batch_size=2)
    sft = adapter_state(model)
    drift = {}
    for weight in (0.0, 3.0):
        model, stage = stage_from(sft, model, tokenizer, "sft+kto", DOWNVOTED, replay=replay,
                                  preference_kl_weight=weight)
        after = answer_logprobs_per_token(model, tokenizer, pairs, max_length=512, batch_size=2)
        drift[weight] = sum(abs(a - b) for a, b in zip(after, base))
        assert (stage["replay_rows"], stage["final_replay_kl"] is None) == ((2, False) if weight else (0, True))
    assert drift[3.0] < 0.5 * drift[0.0], drift


@pytest.mark.slow  # an SFT run and a DPO stage on a tiny model
def test_a_dpo_stage_raises_the_margin_of_its_pairs(tokenizer):
    model, _ = train_adapter(learnable_tiny_llama(tokenizer), tokenizer, CORRECTIONS, TrainConfig(max_steps=10, **FAST))
    before = margins(model, tokenizer, CORRECTIONS, max_length=512, batch_size=4)
    config = TrainConfig(**FAST, objective="sft+dpo", preference_epochs=8, preference_learning_rate=1e-2)
    model, stage = preference.train_preferences(model, tokenizer, "sft+dpo", CORRECTIONS, [], config)
    after = margins(model, tokenizer, CORRECTIONS, max_length=512, batch_size=4)
    assert stage["steps"] > 0 and stage["rows"] == 4
    assert all(a > b for a, b in zip(after, before)), (before, after)
    assert list(model.peft_config) == ["default"]  # TRL's reference copy is not part of the version


@pytest.mark.slow  # an SFT run and two DPO stages on a tiny model
def test_the_dpo_stage_sft_term_holds_the_chosen_answers(tokenizer):
    from training.recipe import adapter_state

    model, _ = train_adapter(learnable_tiny_llama(tokenizer), tokenizer, CORRECTIONS, TrainConfig(max_steps=10, **FAST))
    chosen = [(e["input"], e["output"]) for e in CORRECTIONS]
    sft = adapter_state(model)
    held = {}
    for weight in (0.0, 1.0):
        model, _ = stage_from(sft, model, tokenizer, "sft+dpo", [], preference_sft_weight=weight)
        held[weight] = sum(answer_logprobs_per_token(model, tokenizer, chosen, max_length=512, batch_size=4))
    assert held[1.0] > held[0.0], held


@pytest.mark.slow  # an SFT run and a KTO stage on a tiny model
def test_a_kto_stage_makes_a_downvoted_answer_less_likely_than_sft_left_it(tokenizer):
    model, _ = train_adapter(learnable_tiny_llama(tokenizer), tokenizer, CORRECTIONS, TrainConfig(max_steps=10, **FAST))
    pair = [(DOWNVOTED[0]["input"], DOWNVOTED[0]["answer"])]
    [before] = answer_logprobs_per_token(model, tokenizer, pair, max_length=512, batch_size=1)
    upvoted = [{**e, "rejected": None} for e in CORRECTIONS]  # thumbs only: the downvote is the one undesirable row
    config = TrainConfig(**FAST, objective="sft+kto", preference_epochs=8, preference_learning_rate=1e-2)
    model, stage = preference.train_preferences(model, tokenizer, "sft+kto", upvoted, DOWNVOTED, config)
    [after] = answer_logprobs_per_token(model, tokenizer, pair, max_length=512, batch_size=1)
    assert (stage["desirable"], stage["undesirable"]) == (4, 1) and stage["steps"] > 0
    assert after < before - 0.5, (before, after)
    assert list(model.peft_config) == ["default"]


@pytest.mark.slow  # a training job in a child process
def test_a_kto_job_on_thumbs_is_trained_evaluated_and_gated(tmp_path, tokenizer):
    from training.manager import TrainingManager

    base = save_tiny_base(learnable_tiny_llama(tokenizer), tokenizer, tmp_path / "tiny")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    manager = TrainingManager(store, data_dir, str(base), eval_config=EvalConfig(**FAST_EVAL))
    try:
        conversation = store.create_conversation()
        for n, (question, text) in enumerate([("Is door 1 open?", "yes indeed"), ("Is door 2 open?", "yes indeed"),
                                              ("Is the cellar open?", "The cellar is a cat.")]):
            store.add_message(conversation, "user", question)
            message = store.add_message(conversation, "assistant", text, context=ask(question), model_version="base")
            store.record_feedback(message, rating="up" if n < 2 else "down", status="approved", actor="ui",
                                  rater="r" * 32)
        recipe = {"max_steps": 20, "learning_rate": 0.02, "batch_size": 4, "replay_examples": 0, "warmup_steps": 0,
                  "target_modules": "all-linear", "topup_rounds": 0, "rewordings": 0, "statement_prompts": 0}
        with pytest.raises(ValidationError, match="sft\\+dpo needs at least one approved correction"):
            manager.start({**recipe, "objective": "sft+dpo"})  # thumbs only: refused before any job starts
        assert store.list_jobs() == []

        job = manager.wait(manager.start({**recipe, "objective": "sft+kto", "preference_learning_rate": 0.01}),
                           timeout=300)
        assert job.status in ("succeeded", "rejected"), job.error or job.log
        record = store.get_job(job.id)["metrics"]
        stage = record["preference"]
        assert stage["objective"] == "sft+kto" and (stage["desirable"], stage["undesirable"]) == (2, 1)
        assert stage["steps"] > 0 and stage["final_loss"] is not None
        assert job.metrics.downvoted.n == 1 and job.metrics.learned.n == 2
        assert [r.name for r in job.metrics.gate.rules][-1] == "downvoted"
        assert job.metrics.preference.steps == stage["steps"]
        from bot.ui.admin_training import describe_job

        assert f"objective sft+kto: 3 preference rows, {stage['steps']} steps" in describe_job(job)
        [item] = manager.learning_report(job.model_version).downvoted
        assert item.answer == "The cellar is a cat." and item.logp_candidate is not None
        # Judged after the stage: the thumbs-down is learned in the candidate the gate saw.
        assert item.logp_candidate < item.logp_base - 0.5, item
    finally:
        store.close()
