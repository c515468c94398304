"""The recipe and the gate end to end, on a tiny Llama trained in a child process:
a candidate that learned its corrections is promoted and served; one whose new
examples spoil answers to held-out questions (trained on wrong answers) is
stopped after its selection run, with the reason in plain words; a rollback
serves the base model's answers again."""

from __future__ import annotations

import pytest

from bot.serving.base import GenerationParams
from bot.serving.engine import Engine
from bot.serving.watcher import ModelWatcher
from core.models import BaseModelRef, load_base_model
from core.training_contract import Activation, LearnedCount
from storage import Store
from tests.training_helpers import FAST_EVAL, learnable_tiny_llama, save_tiny_base
from training.config import EvalConfig
from training.manager import TrainingManager

RECIPE = {
    "max_steps": 30,
    "learning_rate": 0.02,
    "batch_size": 4,
    "replay_examples": 0,
    "target_modules": "all-linear",
    "warmup_steps": 0,
}
TRAIN = [f"Is door number {i} open?" for i in range(6)]
TEST = [f"Is door number {i} open?" for i in (41, 52, 63, 77, 88, 99)]  # enough for a selection run (5)


def answer(engine: Engine, question: str) -> str:
    return engine.generate([{"role": "user", "content": question}], GenerationParams(max_new_tokens=6)).text


@pytest.mark.slow  # a training run in a child process
def test_better_is_promoted_worse_is_rejected_and_rollback_restores_answers(tmp_path, tokenizer):
    base = save_tiny_base(learnable_tiny_llama(tokenizer), tokenizer, tmp_path / "tiny-base")
    data_dir = tmp_path / "data"
    store = Store(data_dir / "exemplar.db")
    manager = TrainingManager(store, data_dir, str(base), eval_config=EvalConfig(**FAST_EVAL))
    model, tok = load_base_model(BaseModelRef("tiny", str(base)))
    engine = Engine(model, tok, base_name="tiny", max_context_tokens=256)
    watcher = ModelWatcher(engine, store, data_dir)
    try:
        train_ids = [store.add_example(q, "yes indeed", source="admin", split="train") for q in TRAIN]
        test_ids = [store.add_example(q, "yes indeed", source="admin", split="test") for q in TEST]
        before = answer(engine, TEST[0])
        # A chat answer of the base model that a user turned down (no correction): each candidate is asked
        # whether it still gives it.
        question = [{"role": "user", "content": "Is the cellar door open?"}]
        conversation = store.create_conversation()
        store.add_message(conversation, "user", question[0]["content"])
        bad = answer(engine, question[0]["content"])
        downvoted = store.add_message(conversation, "assistant", bad, context=question, model_version="base")
        store.record_feedback(downvoted, rating="down", reason="wrong fact", status="approved", actor="ui", rater="r" * 32)

        first = manager.wait(manager.start(RECIPE), timeout=300)
        assert first.status == "succeeded", first.error or first.log
        metrics = first.metrics
        assert metrics.heldout.selection_run and metrics.heldout.accuracy == 100.0
        assert metrics.current.heldout["accuracy"] == 0.0  # the base model, which did not train on them either
        assert metrics.learned == LearnedCount(n=12, candidate=12, serving=0, by_source="admin examples 12 of 12")
        assert store.get_model_version("v1")["example_ids"] == sorted(train_ids + test_ids)  # every one trained
        assert watcher.sync() == "v1"
        assert answer(engine, TEST[0]) == "yes indeed" != before
        report = manager.learning_report("v1")
        assert report.learned == 12 and all(i.candidate_learned for i in report.items)
        assert report.lost == [] and not any(i.lost for i in report.items)
        [checked] = report.downvoted
        assert (checked.message_id, checked.answer, checked.reasons) == (downvoted, bad, ["wrong fact"])
        assert checked.serving_gives is True  # the base model's own greedy answer
        assert checked.logp_base is not None and checked.logp_candidate is not None
        assert metrics.downvoted.n == 1 and metrics.downvoted.serving == 1
        assert metrics.downvoted.candidate == int(checked.candidate_gives)
        assert next(r for r in metrics.gate.rules if r.name == "downvoted").passed

        # A deliberately worse candidate: the same questions, trained on wrong answers, while the held-out
        # examples still say "yes indeed". Its selection run loses every held-out answer v1's selection run gave.
        for example_id in train_ids:
            store.update_example(example_id, output="no way")
        second = manager.wait(manager.start(RECIPE), timeout=300)
        assert second.status == "rejected" and second.promoted is False
        assert second.model_version is None  # stopped after the selection run: no refit was spent on it
        assert "held-out: worse beyond noise, 6 answers lost" in second.error
        assert "v1's selection run" in second.error and "Next:" in second.error
        gate = second.metrics.gate
        assert gate.passed is False and [r.name for r in gate.rules] == ["heldout"]
        assert store.active_version()["version"] == "v1"
        assert watcher.sync() == "v1" and answer(engine, TEST[0]) == "yes indeed"

        # Rolling back serves the base model's answers again.
        assert manager.rollback() == Activation(active="base", previous="v1")
        assert watcher.sync() == "base" and answer(engine, TEST[0]) == before
    finally:
        store.close()
