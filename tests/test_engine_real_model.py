"""The engine's continuous batching with the bundled SmolLM2-135M-Instruct, on
canary questions (training/canary.jsonl): batching and the dtype switch leave
greedy answers as plain `transformers` `generate` gives them, where promised."""

import json
import threading
from pathlib import Path

import pytest
import torch

from bot.serving.base import GenerationParams
from bot.serving.engine import Engine
from core.prompts import encode, render_prompt

pytestmark = pytest.mark.slow

CANARY = [json.loads(line)["question"] for line in
          (Path(__file__).resolve().parents[1] / "training" / "canary.jsonl").read_text().splitlines()[:8]]
TOKENS = 20


def plain_generate(engine, question, model=None):
    """The reference: transformers generate, batch 1, greedy, on `model` (default: the fp32 weights)."""
    tokenizer = engine.tokenizer
    ids = torch.tensor([encode(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": question}]))])
    with torch.inference_mode():
        out = (model or engine.model).generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS,
                                    do_sample=False, temperature=None, top_p=None, top_k=None,
                                    pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def ask_all_at_once(engine, questions):
    results = [None] * len(questions)

    def ask(i):
        results[i] = engine.generate([{"role": "user", "content": questions[i]}], GenerationParams(max_new_tokens=TOKENS))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_canary_answers_batched_in_fp32_equal_plain_generate_and_single_answers_keep_their_dtype(real_engine):
    expected = [plain_generate(real_engine, q) for q in CANARY]
    # bf16 from 4 at once (the default on a CPU without native bf16): one person's answer is fp32's.
    from_four = Engine(real_engine.model, real_engine.tokenizer, base_name="bundled", bf16_from_batch=4)
    for question, answer in zip(CANARY[:2], expected):
        assert from_four.generate([{"role": "user", "content": question}],
                                  GenerationParams(max_new_tokens=TOKENS)).text == answer
    # The served default on a CPU with native bf16 decodes one answer in bf16 too: it is plain `generate`'s
    # answer on the same bf16 weights (how often that differs from fp32's is measured in docs/performance.md).
    if real_engine.bf16_from_batch == 1:
        for question in CANARY[:2]:
            assert real_engine.generate([{"role": "user", "content": question}],
                                        GenerationParams(max_new_tokens=TOKENS)).text == plain_generate(
                real_engine, question, real_engine.dtypes.bf16_model)
    # Eight at once, kept in fp32: every answer equals its single-stream greedy answer.
    fp32 = Engine(real_engine.model, real_engine.tokenizer, base_name="bundled", bf16_from_batch=0)
    batched = ask_all_at_once(fp32, CANARY)
    assert [g.text for g in batched] == expected
    assert all(g.model_version == "base" for g in batched)


def test_long_prompts_keep_plain_generate_answers_with_fp32_prefill(real_engine):
    """bf16 prefill of long prompts (the default from 256 tokens) may change a greedy answer (the measured
    rate is in docs/performance.md); bf16_prefill_from_tokens=0 keeps every answer as plain `generate` gives it."""
    passage = ("The Halvard ferry company runs boats between the harbour and the three islands. Ferries leave "
               "every hour from seven in the morning until ten at night in summer. ") * 12
    question = passage + "\nWhen do the ferries leave?"
    expected = plain_generate(real_engine, question)
    fp32 = Engine(real_engine.model, real_engine.tokenizer, base_name="bundled", bf16_from_batch=0,
                  bf16_prefill_from_tokens=0)
    answer = fp32.generate([{"role": "user", "content": question}], GenerationParams(max_new_tokens=TOKENS))
    assert answer.prompt_tokens > 300 and answer.text == expected
    served = real_engine.generate([{"role": "user", "content": question}], GenerationParams(max_new_tokens=TOKENS))
    assert served.completion_tokens >= 1 and served.text  # prefilled in bf16, decoded in fp32
