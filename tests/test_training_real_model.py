"""The shipped canary and replay sets, checked against the real bundled model:
it answers every canary question with a keyword, confidently (the selection
rule: the keyword's first token has probability >= 0.5 under greedy decoding),
and replay answers are its own greedy answers' opening."""

from __future__ import annotations

import re

import pytest

from core.prompts import encode, render_prompt
from training.dataset import load_replay
from training.evaluate import generate_answers, load_canary, mentions_any, normalise_answer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(bundled_checkpoint):
    from core.models import BaseModelRef, load_base_model

    return load_base_model(BaseModelRef("bundled", str(bundled_checkpoint)))


def test_the_base_model_answers_every_canary_confidently(base):
    import torch

    model, tokenizer = base
    canary = load_canary()
    answers = generate_answers(
        model, tokenizer, [[{"role": "user", "content": c["question"]}] for c in canary], max_new_tokens=32, batch_size=8
    )
    missed = [(c["question"], a) for c, a in zip(canary, answers) if not mentions_any(a, c["keywords"])]
    assert not missed, missed

    unsure = []
    for item, text in zip(canary, answers):
        prompt = encode(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": item["question"]}]))
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = encoded["input_ids"], encoded["offset_mapping"]
        found = [m.start() for k in item["keywords"] for m in re.finditer(rf"(?<!\w){re.escape(k)}(?!\w)", text, re.I)]
        start = min(found)
        position = next(i for i, (begin, end) in enumerate(spans) if end > start)  # the keyword's first token
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + ids[:position]])).logits[0, -1]
        probability = torch.softmax(logits.float(), -1)[ids[position]].item()
        if probability < 0.5:
            unsure.append((item["question"], text[:60], round(probability, 3)))
    assert not unsure, unsure


def test_replay_answers_are_the_base_models_own(base):
    model, tokenizer = base
    replay = load_replay(1000)
    answers = generate_answers(model, tokenizer, [r["input"] for r in replay], max_new_tokens=48, batch_size=8)
    for row, answer in zip(replay, answers):
        # The shipped answer is the opening of the model's own greedy answer (cut at a sentence end).
        assert normalise_answer(answer).startswith(normalise_answer(row["output"])[:40]), (row["output"], answer)
