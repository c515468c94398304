"""Batching inside one process, with the bundled model (or --base-model): how the
engine's own continuous-batching scheduler compares with transformers' built-in
continuous batching (`model.generate_batch`, attention "paged|eager") and with
one request at a time, in fp32 and bf16. Greedy, same prompts, one run.

    python -m benchmarks.bench_batching                 # about 4 minutes on 2 cores
    python -m benchmarks.bench_batching --tokens 32 --batch 8 --json out.json

It also answers the canary questions (training/canary.jsonl) alone in fp32
(today's answers) and 4/8/16 at once, and counts the greedy answers that change:
batched in fp32, alone and batched with the served default (bf16 from 1 at once on a CPU with native bf16, else 4), prefilled
in bf16, and, after a ~660-token passage, with the long-prompt default (bf16
prefill from 256 tokens); with the canary score (keyword hits) of each.

    python -m benchmarks.bench_batching --canary-only --threads 1   # the canary check alone

Prints a table of aggregate tokens/s (median of --repeats) with ratios against
the engine at batch 1 in fp32, and how many batched greedy answers equal the
same request answered alone at the same dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.base_model import add_model_flags, base_model
from benchmarks.prompts import PASSAGE, QUESTIONS
from benchmarks.timing import run_at_once


def run_engine(engine, n: int, tokens: int, first: int = 0) -> tuple[float, list[str]]:
    """n requests (questions first, first+1, ...) submitted at once; returns (aggregate tokens/s, answers)."""
    from bot.serving.base import GenerationParams

    def ask(i: int):
        return engine.generate([{"role": "user", "content": QUESTIONS[(first + i) % len(QUESTIONS)]}],
                               GenerationParams(max_new_tokens=tokens))

    results, seconds = run_at_once(ask, n)
    return sum(g.completion_tokens for g in results) / seconds, [g.text for g in results]


def ask_each(engine, questions: list[str], tokens: int, at_once: int) -> list[str]:
    """Answers to `questions`, `at_once` of them submitted together."""
    from bot.serving.base import GenerationParams

    def ask(question: str) -> str:
        return engine.generate([{"role": "user", "content": question}], GenerationParams(max_new_tokens=tokens)).text

    answers: list[str] = []
    for start in range(0, len(questions), at_once):
        group = questions[start:start + at_once]
        texts, _ = run_at_once(lambda i, group=group: ask(group[i]), len(group))
        answers += texts
    return answers


def canary_differences(ref, count: int, tokens: int, batches: list[int], long_count: int = 0) -> dict:
    """How many canary greedy answers change, against each question answered alone in fp32
    (today's answer, the same as plain `generate`), and the canary score (keyword hits) of each:

    - answered N at once, kept in fp32 (`bf16_from_batch=0`): batching alone;
    - answered alone and N at once with the served default (bf16 from `default_bf16_from_batch()` at
      once: 1 on a CPU with native bf16, so even a lone answer is bf16 there, else 4);
    - alone, with the prompt prefilled in bf16 (every prompt; the long-prompt setting);
    - with `long_count` > 0: the first `long_count` questions after a ~650-token passage, alone,
      fp32 against the long-prompt default (bf16 prefill from `DEFAULT_BF16_PREFILL_FROM_TOKENS`).
    """
    import torch

    from bot.serving.base import GenerationParams
    from bot.serving.dtype import DEFAULT_BF16_PREFILL_FROM_TOKENS
    from bot.serving.engine import Engine
    from core.models import load_base_model
    from training.evaluate import load_canary, mentions_any

    canary = load_canary()[:count]
    questions = [c["question"] for c in canary]
    model, tokenizer = load_base_model(ref, dtype=torch.float32, device="cpu")
    fp32 = Engine(model, tokenizer, base_name=ref.name, bf16_from_batch=0, bf16_prefill_from_tokens=0)
    served = Engine(model, tokenizer, base_name=ref.name)  # the served defaults (bf16 from 1 or 4 at once)
    bf16_prefill = Engine(model, tokenizer, base_name=ref.name, bf16_from_batch=0, bf16_prefill_from_tokens=1)

    def score(answers: list[str], keys: list[dict]) -> int:
        return sum(mentions_any(a, c["keywords"]) for a, c in zip(answers, keys))

    alone = ask_each(fp32, questions, tokens, 1)
    rows = [{"setting": "fp32, alone (reference)", "changed": 0, "score": score(alone, canary), "n": len(alone)}]
    label = f"served default (bf16 from {served.bf16_from_batch} at once)"
    runs = [("fp32", fp32, max(batches))] + [(label, served, b) for b in [1, *batches]]
    default_alone = None
    for name, engine, at_once in runs:
        answers = ask_each(engine, questions, tokens, at_once)
        row = {"setting": f"{name}, {at_once} at once", "n": len(answers),
               "changed": sum(a != b for a, b in zip(alone, answers)), "score": score(answers, canary),
               "changed_questions": [q for q, a, b in zip(questions, alone, answers) if a != b]}
        if engine is served and at_once == 1:
            default_alone = answers
        elif engine is served and default_alone is not None and served.bf16_from_batch == 1:
            # Batching alone, at the same dtype: against the default's own answer to one person (bf16 too).
            row["changed_vs_default_alone"] = sum(a != b for a, b in zip(default_alone, answers))
        rows.append(row)
    answers = ask_each(bf16_prefill, questions, tokens, 1)
    rows.append({"setting": "bf16 prefill (every prompt), alone", "n": len(answers),
                 "changed": sum(a != b for a, b in zip(alone, answers)), "score": score(answers, canary),
                 "changed_questions": [q for q, a, b in zip(questions, alone, answers) if a != b]})
    if long_count:
        passage = PASSAGE * 10
        long_questions = [passage + "\n" + q for q in questions[:long_count]]
        threshold = DEFAULT_BF16_PREFILL_FROM_TOKENS or 1
        long_default = Engine(model, tokenizer, base_name=ref.name, bf16_from_batch=0,
                              bf16_prefill_from_tokens=threshold)
        long_alone = ask_each(fp32, long_questions, tokens, 1)
        long_answers = ask_each(long_default, long_questions, tokens, 1)
        prompt_tokens = len(fp32.prepare([{"role": "user", "content": long_questions[0]}],
                                         GenerationParams(max_new_tokens=tokens)).token_ids)
        rows.append({"setting": f"~{prompt_tokens}-token prompts, fp32, alone (reference)", "n": len(long_alone),
                     "changed": 0, "score": score(long_alone, canary)})
        rows.append({"setting": f"~{prompt_tokens}-token prompts, bf16 prefill from {threshold} tokens, alone",
                     "n": len(long_answers), "changed": sum(a != b for a, b in zip(long_alone, long_answers)),
                     "score": score(long_answers, canary),
                     "changed_questions": [q for q, a, b in zip(questions, long_alone, long_answers) if a != b]})
    return {"questions": len(questions), "tokens": tokens, "rows": rows}


def print_canary(canary: dict) -> None:
    print(f"\nCanary ({canary['questions']} questions, {canary['tokens']} tokens, greedy): answers that differ from "
          "the same question answered alone in fp32, and the canary score (keyword hits)")
    print("| setting | answers changed | changed vs the default alone (same dtype) | canary score |")
    print("|---|---|---|---|")
    for row in canary["rows"]:
        same_dtype = f"{row['changed_vs_default_alone']}/{row['n']}" if "changed_vs_default_alone" in row else ""
        print(f"| {row['setting']} | {row['changed']}/{row['n']} | {same_dtype} | {row['score']}/{row['n']} |")


def run_transformers_cb(model, tokenizer, n: int, tokens: int) -> tuple[float, list[str]]:
    from transformers import GenerationConfig

    from core.prompts import encode, render_prompt

    prompts = [encode(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]))
               for i in range(n)]
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    started = time.perf_counter()
    outputs = model.generate_batch(prompts, generation_config=config, warmup=False)
    seconds = time.perf_counter() - started
    ordered = [outputs[k] for k in sorted(outputs, key=lambda k: int(str(k).rsplit("_", 1)[-1]))]
    answers = [tokenizer.decode(o.generated_tokens, skip_special_tokens=True).strip() for o in ordered]
    return sum(len(o.generated_tokens) for o in ordered) / seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-transformers-cb", action="store_true")
    parser.add_argument("--canary", type=int, default=40,
                        help="canary questions to check for changed greedy answers when batched (0 skips)")
    parser.add_argument("--canary-batches", default="4,8,16", help="how many at once, for the canary check")
    parser.add_argument("--canary-long", type=int, default=10,
                        help="canary questions also asked after a ~650-token passage (bf16 prefill check; 0 skips)")
    parser.add_argument("--canary-only", action="store_true", help="only the canary check (no speed table)")
    parser.add_argument("--json", default=None, help="write the results here as JSON")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from bot.serving.engine import Engine
    from core.models import load_base_model

    torch.set_num_threads(args.threads)
    ref = base_model(args)
    canary_batches = [int(b) for b in args.canary_batches.split(",")]
    if args.canary_only:
        canary = canary_differences(ref, args.canary, 32, canary_batches, args.canary_long)
        print_canary(canary)
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "canary": canary}, indent=2, default=str))
        return
    rows = []
    answers: dict[str, list[str]] = {}

    def record(name: str, runs: list[tuple[float, list[str]]]) -> None:
        rows.append({"setting": name, "tokens_per_s": statistics.median(r[0] for r in runs)})
        answers[name] = runs[-1][1]

    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tokenizer = load_base_model(ref, dtype=dtype, device="cpu")
        engine = Engine(model, tokenizer, base_name=ref.name)
        run_engine(engine, 2, 4)  # warm-up
        singles = [run_engine(engine, 1, args.tokens) for _ in range(args.repeats)]
        record(f"engine {dtype_name}, batch 1", singles)
        batched = [run_engine(engine, args.batch, args.tokens) for _ in range(args.repeats)]
        record(f"engine {dtype_name}, batch {args.batch}", batched)
        # Each batched answer against the same question answered alone.
        single_answers = [run_engine(engine, 1, args.tokens, first=i)[1][0] for i in range(args.batch)]
        same = sum(a == b for a, b in zip(single_answers, answers[f"engine {dtype_name}, batch {args.batch}"]))
        rows[-1]["same_as_alone"] = f"{same}/{len(single_answers)}"
        del engine, model

    if not args.skip_transformers_cb:
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype, attn_implementation="paged|eager").eval()
            run_transformers_cb(model, tokenizer, 2, 4)
            runs = [run_transformers_cb(model, tokenizer, args.batch, args.tokens) for _ in range(args.repeats)]
            record(f"transformers generate_batch {dtype_name}, batch {args.batch}", runs)
            del model

    baseline = rows[0]["tokens_per_s"]
    print(f"\n{args.batch} requests at once vs one, greedy, {args.tokens} new tokens, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"| {'setting':<44} | tok/s | vs engine fp32 batch 1 | batched = alone |")
    print(f"|{'-' * 46}|-------|------------------------|-----------------|")
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / baseline
        print(f"| {row['setting']:<44} | {row['tokens_per_s']:5.1f} | {row['ratio']:22.2f}x | "
              f"{row.get('same_as_alone', ''):>15} |")
    canary = None
    if args.canary:
        canary = canary_differences(ref, args.canary, 32, canary_batches, args.canary_long)
        print_canary(canary)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "answers": answers,
                                               "canary": canary}, indent=2, default=str))


if __name__ == "__main__":
    main()
