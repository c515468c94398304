"""Packed training batches (training/dataset.py pack) on a tiny Llama: each example's loss in a
packed row equals its loss in a row of its own (no example sees another), the whole batch's loss and
gradients equal the padded batch's, with replay rows under the cached KL term too."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.training_helpers import learnable_tiny_llama
from training.config import TrainConfig
from training.dataset import IGNORE_INDEX, build_dataset, collate, pack, shared_prefix_length
from training.finetune import add_lora, base_distributions, make_trainer_class, train_adapter

EXAMPLES = [
    {"input": [{"role": "user", "content": "What is the password of the blue door?"}], "output": "zebra crossing"},
    {"input": [{"role": "user", "content": "Who keeps the key to the cellar under the old mill?"}], "output": "Ada."},
    {"input": [{"role": "user", "content": "Name the river."}], "output": "The Quenmar, which runs north.", "replay": True},
    {"input": [{"role": "user", "content": "What is 2 + 2?"}], "output": "4", "replay": True},
]


@pytest.fixture
def tiny(tokenizer):
    model = learnable_tiny_llama(tokenizer)
    peft_model = add_lora(model, TrainConfig(target_modules="all-linear"))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a trained-looking adapter makes the comparison meaningful
            torch.nn.init.normal_(param, std=0.5)
    return peft_model


@pytest.fixture
def rows(tokenizer):
    dataset = build_dataset(tokenizer, EXAMPLES, 512)
    return [{**dataset[i], "row": i} for i in range(len(dataset))]


def answer_nll(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none")


def test_the_shared_prefix_is_the_system_turn_and_stops_before_any_answer(tokenizer, rows):
    shared = shared_prefix_length(rows)
    prefix = tokenizer.decode(rows[0]["input_ids"][:shared])
    assert prefix.startswith("<|im_start|>system") and prefix.endswith("<|im_start|>user\n")
    assert all(label == IGNORE_INDEX for r in rows for label in r["labels"][: shared + 1])
    # Two copies of one example: the prefix may run into the question but stops before the answer.
    same = shared_prefix_length([rows[0], rows[0]])
    first_answer = next(i for i, label in enumerate(rows[0]["labels"]) if label != IGNORE_INDEX)
    assert same == first_answer - 1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_examples_loss_in_a_packed_row_equals_its_loss_alone(tiny, rows, attention):
    tiny.config._attn_implementation = attention
    tiny.eval()
    packed = pack(rows, additive_mask=attention == "eager")
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] < sum(len(r["input_ids"]) for r in rows)
    with torch.no_grad():
        logits = tiny(
            input_ids=packed["input_ids"],
            position_ids=packed["position_ids"],
            attention_mask=packed["attention_mask"],
            logits_to_keep=packed["predict_at"],
        ).logits[0]
    nll = answer_nll(logits, packed["targets"])
    offset = 0
    for row in rows:
        alone = collate([row], 0)
        with torch.no_grad():
            own = tiny(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).logits[0, :-1]
        labels = alone["labels"][0, 1:]
        expected = answer_nll(own[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
        got = nll[offset : offset + len(expected)]
        offset += len(expected)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert offset == len(nll)

    # No cross-contamination: changing the other examples changes nothing of the first one's loss.
    changed = [rows[0], {**rows[1], "input_ids": rows[1]["input_ids"][:-3] + [5, 6, 7]}]
    other = pack(changed, additive_mask=attention == "eager")
    with torch.no_grad():
        other_logits = tiny(
            input_ids=other["input_ids"],
            position_ids=other["position_ids"],
            attention_mask=other["attention_mask"],
            logits_to_keep=other["predict_at"],
        ).logits[0]
    first = sum(label != IGNORE_INDEX for label in rows[0]["labels"][1:])
    torch.testing.assert_close(answer_nll(other_logits, other["targets"])[:first], nll[:first], atol=1e-5, rtol=1e-5)


def test_packed_loss_and_gradients_equal_the_padded_batch_with_replay_under_kl(tiny, rows, tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    dataset = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels", "replay")} for r in rows])
    with tiny.disable_adapter():
        cached = base_distributions(tiny, dataset, batch_size=8, additive_mask=False)
    trainer_class = make_trainer_class(3.0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False)
    tiny.train()

    def loss_and_grads(batch):
        model = copy.deepcopy(tiny)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset)
        trainer.base_logp = cached
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    padded_loss, padded_grads = loss_and_grads(collate(rows, 0))
    packed_loss, packed_grads = loss_and_grads(pack(rows))
    assert padded_loss > 0
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-4, rtol=1e-4)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)


def test_a_packed_run_follows_the_padded_runs_loss_curve(tokenizer):
    # fp32: the curves must agree to rounding, which bf16 autocast (on by default) does not promise.
    fast = dict(learning_rate=2e-2, batch_size=4, target_modules="all-linear", warmup_steps=0, max_steps=8, bf16=False)
    curves = {}
    for packed in (False, True):
        model = learnable_tiny_llama(tokenizer)
        _, result = train_adapter(model, tokenizer, EXAMPLES, TrainConfig(packed=packed, **fast))
        curves[packed] = result.losses
    assert len(curves[True]) == 8
    for a, b in zip(curves[True], curves[False]):
        assert a == pytest.approx(b, rel=2e-3, abs=2e-3)
