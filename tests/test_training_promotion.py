"""The promotion gate and the registry end to end, on a tiny Llama trained in a
child process: a better candidate is promoted and served, a worse one (trained
on wrong answers) is rejected with its reasons and kept, an admin can still
serve it, and a rollback serves the old version's answers again."""

from __future__ import annotations

import pytest

from bot.engine import Engine, GenerationParams
from bot.server import ModelWatcher
from core.models import BaseModelRef, load_base_model
from storage import Store
from training.config import EvalConfig
from training.manager import TrainingManager
from training_helpers import FAST_EVAL, learnable_tiny_llama, save_tiny_base

RECIPE = {
    "max_steps": 30,
    "learning_rate": 0.02,
    "batch_size": 4,
    "replay_examples": 0,
    "target_modules": "all-linear",
    "warmup_steps": 0,
}
TRAIN = [f"Is door number {i} open?" for i in range(6)]
TEST = ["Is door number 41 open?", "Is door number 77 open?"]


def answer(engine: Engine, question: str) -> str:
    return engine.generate([{"role": "user", "content": question}], GenerationParams(max_new_tokens=6)).text


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
        for q in TEST:
            store.add_example(q, "yes indeed", source="admin", split="test")
        before = answer(engine, TEST[0])

        first = manager.wait(manager.start(RECIPE), timeout=300)
        assert first["status"] == "succeeded", first["error"] or first["log"]
        assert first["metrics"]["heldout"]["accuracy"] == 100.0
        assert first["metrics"]["current"]["heldout"]["accuracy"] == 0.0
        assert watcher.sync() == "v1"
        assert answer(engine, TEST[0]) == "yes indeed" != before

        # A deliberately worse candidate: the same questions, trained on wrong answers.
        for example_id in train_ids:
            store.update_example(example_id, output="no way")
        second = manager.wait(manager.start(RECIPE), timeout=300)
        assert second["status"] == "rejected" and second["promoted"] is False
        assert second["model_version"] == "v2"
        assert "held-out accuracy fell from 100% to 0%" in second["error"]
        assert second["metrics"]["gate"]["passed"] is False
        v2 = store.get_model_version("v2")
        assert v2["status"] == "rejected" and v2["parent_version"] == "v1"
        assert [s["candidate"] for s in v2["metrics"]["samples"]] == ["no way", "no way"]
        assert [s["current"] for s in v2["metrics"]["samples"]] == ["yes indeed", "yes indeed"]
        assert store.active_version()["version"] == "v1"
        assert watcher.sync() == "v1" and answer(engine, TEST[0]) == "yes indeed"

        # An admin may serve the rejected version anyway, and roll back.
        manager.activate("v2")
        assert watcher.sync() == "v2" and answer(engine, TEST[0]) == "no way"
        assert manager.rollback() == {"active": "v1", "previous": "v2"}
        assert watcher.sync() == "v1" and answer(engine, TEST[0]) == "yes indeed"
        rows = {r["version"]: r for r in manager.models_view()}
        assert rows["v1"]["active"] and not rows["v2"]["active"]
        assert rows["v2"]["status"] == "retired" and rows["v2"]["gate"]["passed"] is False  # served once, then retired
    finally:
        store.close()
