"""The fine-tuning recipe on a tiny Llama: the loss falls, LoRA weights change
and base weights do not, a trained answer comes back, and replay rows under the
KL term hold the model at the base model."""

from __future__ import annotations

import pytest
import torch

from tests.training_helpers import learnable_tiny_llama
from training.config import TrainConfig
from training.evaluate import generate_answers
from training.finetune import train_adapter

# fp32: these tests check the mechanism at a tiny model's high learning rate, where bf16 autocast (the default)
# holds the KL rows less tightly (drift 0.85 against 0.52 in fp32); its effect on the real model is judged by
# the canary (python -m benchmarks.bench_generalise, tests/test_training_scenario.py).
FAST = dict(learning_rate=2e-2, batch_size=4, replay_examples=0, target_modules="all-linear", warmup_steps=0, bf16=False)
QUESTION = [{"role": "user", "content": "What is the password of the blue door?"}]
EXAMPLES = [
    {"input": QUESTION, "output": "zebra crossing"},
    {"input": [{"role": "user", "content": "What is the password of the red door?"}], "output": "yellow lantern"},
]


@pytest.fixture
def tiny(tokenizer):
    return learnable_tiny_llama(tokenizer)


def base_weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_loss_falls_lora_changes_base_does_not_and_the_answer_comes_back(tiny, tokenizer):
    before = base_weights(tiny)
    model, result = train_adapter(tiny, tokenizer, EXAMPLES, TrainConfig(max_steps=30, **FAST))
    assert result.steps == 30 and len(result.losses) == 30
    assert result.losses[-1] < 0.3 * result.losses[0]
    assert result.tokens > 0 and result.tokens_per_second > 0

    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert any(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at zero
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        original = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert not param.requires_grad
        assert torch.equal(param, before[original]), f"base weight {original} changed"

    assert generate_answers(model, tokenizer, [QUESTION], max_new_tokens=6, batch_size=1) == ["zebra crossing"]
    with model.disable_adapter():
        assert generate_answers(model, tokenizer, [QUESTION], max_new_tokens=6, batch_size=1) != ["zebra crossing"]


def test_replay_rows_under_kl_stay_near_the_base_model(tiny, tokenizer):
    import copy

    from core.prompts import encode, render_training_pair

    _, full = render_training_pair(tokenizer, QUESTION, "zebra crossing")
    ids = torch.tensor([encode(tokenizer, full)])
    with torch.inference_mode():
        base_logits = tiny(input_ids=ids).logits

    def drift(kl_weight: float) -> float:
        replay = [{**e, "replay": True} for e in EXAMPLES]
        config = TrainConfig(max_steps=10, replay_kl_weight=kl_weight, **FAST)
        model, _ = train_adapter(copy.deepcopy(tiny), tokenizer, replay, config)
        with torch.inference_mode():
            return (model(input_ids=ids).logits - base_logits).abs().mean().item()

    # As text, replay rows teach their answers; under the KL term they hold the base model's predictions.
    assert drift(3.0) < drift(0.0) / 2


def test_cut_short_by_a_callback(tiny, tokenizer):
    from transformers import TrainerCallback

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    _, result = train_adapter(tiny, tokenizer, EXAMPLES, TrainConfig(max_steps=50, **FAST), callbacks=[StopAtTwo()])
    assert result.steps == 2 and result.stopped_early
