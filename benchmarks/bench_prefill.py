"""Long prompts inside one process, with the bundled model: how soon the first
token of a ~675-token prompt comes, and how long a long prompt joining a running
batch stalls the answers already streaming. Greedy; settings take turns
(A B A B ...) in one run, and ratios are against figures from this same run.

1. Prefill alone (the model's forward pass over the prompt, no engine):
   fp32 / bf16 weights, attention "sdpa" / "eager", at 1 and --threads threads.
2. First token of one long prompt through the engine: today's fp32 prefill
   (`bf16_prefill_from_tokens=0`) against bf16 prefill (the default), and plain
   `transformers` `generate`; and whether the greedy answer stayed the same.
3. A long prompt joining --streams answers that are decoding: the longest gap
   between two tokens of the running answers while it joins, and its own first
   token, prefilled whole (`prefill_chunk_tokens=0`) against in chunks (default).

    python -m benchmarks.bench_prefill                 # about 3 minutes on 2 quiet cores
    python -m benchmarks.bench_prefill --repeats 5 --json prefill.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

from benchmarks.base_model import add_model_flags, base_model
from benchmarks.prompts import QUESTIONS, long_question


def prefill_seconds(model, ids, impl: str) -> float:
    import torch
    from transformers import DynamicCache

    model.config._attn_implementation = impl
    try:
        started = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=DynamicCache(config=model.config),
                  use_cache=True, logits_to_keep=1)
        return time.perf_counter() - started
    finally:
        model.config._attn_implementation = "sdpa"


def first_token(engine, messages, tokens: int) -> tuple[float, str]:
    from bot.serving.base import GenerationParams

    started = time.perf_counter()
    first = None
    generation = engine.stream(messages, GenerationParams(max_new_tokens=tokens))
    for _ in generation:
        if first is None:
            first = time.perf_counter() - started
    return first, generation.text


def plain_first_token(model, tokenizer, messages) -> float:
    import torch

    from core.prompts import encode, render_prompt

    ids = torch.tensor([encode(tokenizer, render_prompt(tokenizer, messages))])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                       temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - started


def join_while_decoding(engine, long_messages, streams: int, tokens: int) -> dict:
    """`streams` short answers decode; a long prompt joins. Longest token gap of the running answers
    from the join until the long answer's first token, and that first token's time."""
    from bot.serving.base import GenerationParams

    stamps: list[list[float]] = [[] for _ in range(streams)]
    started = threading.Barrier(streams + 1)

    def run(i: int) -> None:
        generation = engine.stream([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                   GenerationParams(max_new_tokens=tokens))
        waited = False
        for n, _ in enumerate(generation):
            stamps[i].append(time.perf_counter())
            if n == 3:
                started.wait()
                waited = True
        if not waited:  # an answer shorter than 4 pieces
            started.wait()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    started.wait()
    joined = time.perf_counter()
    ttft, _ = first_token(engine, long_messages, 4)
    until = joined + ttft
    for t in threads:
        t.join()
    gaps = [b - a for s in stamps for a, b in pairwise(s) if b > joined and a < until]
    return {"ttft": ttft, "max_gap": max(gaps) if gaps else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens of the long prompt's answer (equality check)")
    parser.add_argument("--streams", type=int, default=4, help="answers decoding when the long prompt joins")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from bot.serving.dtype import DEFAULT_BF16_PREFILL_FROM_TOKENS
    from bot.serving.engine import DEFAULT_PREFILL_CHUNK_TOKENS, Engine
    from core.models import load_base_model
    from core.prompts import encode, render_prompt

    torch.set_num_threads(args.threads)
    ref = base_model(args)
    model, tokenizer = load_base_model(ref, device="cpu")
    model.eval()
    long_messages = [{"role": "user", "content": long_question(tokenizer)}]
    ids = torch.tensor([encode(tokenizer, render_prompt(tokenizer, long_messages))])
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "prompt_tokens": ids.shape[1]}

    # 1. The forward pass alone.
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    cases = {}
    for threads in sorted({1, args.threads}):
        for dtype_name, weights in (("fp32", model), ("bf16", bf16)):
            for impl in ("sdpa", "eager"):
                cases[f"{dtype_name}, {impl}, {threads} thread{'s' * (threads > 1)}"] = (weights, impl, threads)
    for weights, impl, _ in cases.values():
        prefill_seconds(weights, ids, impl)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (weights, impl, threads) in cases.items():
            torch.set_num_threads(threads)
            times[name].append(prefill_seconds(weights, ids, impl))
    torch.set_num_threads(args.threads)
    del bf16
    base_name = f"fp32, sdpa, {args.threads} thread{'s' * (args.threads > 1)}"
    base = statistics.median(times[base_name])
    results["prefill"] = {name: {"seconds": statistics.median(t), "speed_vs_fp32": base / statistics.median(t)}
                          for name, t in times.items()}

    # 2. First token through the engine, alone.
    old = Engine(model, tokenizer, base_name=ref.name, bf16_prefill_from_tokens=0, prefill_chunk_tokens=0)
    new = Engine(model, tokenizer, base_name=ref.name)
    first_token(old, long_messages, 2), first_token(new, long_messages, 2)  # warm-up
    runs: dict[str, list[float]] = {"fp32 prefill (before)": [], "bf16 prefill (default)": [], "plain generate": []}
    answers = {}
    for _ in range(args.repeats):
        seconds, answers["old"] = first_token(old, long_messages, args.tokens)
        runs["fp32 prefill (before)"].append(seconds)
        seconds, answers["new"] = first_token(new, long_messages, args.tokens)
        runs["bf16 prefill (default)"].append(seconds)
        runs["plain generate"].append(plain_first_token(model, tokenizer, long_messages))
    results["first_token"] = {name: statistics.median(t) for name, t in runs.items()}
    results["same_greedy_answer"] = answers["old"] == answers["new"]

    # 3. Joining a decoding batch.
    whole = Engine(model, tokenizer, base_name=ref.name, prefill_chunk_tokens=0)
    joins: dict[str, list[dict]] = {"prefilled whole": [], f"in chunks of {DEFAULT_PREFILL_CHUNK_TOKENS}": []}
    for _ in range(args.repeats):
        joins["prefilled whole"].append(join_while_decoding(whole, long_messages, args.streams, 48))
        joins[f"in chunks of {DEFAULT_PREFILL_CHUNK_TOKENS}"].append(
            join_while_decoding(new, long_messages, args.streams, 48))
    results["join"] = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in joins.items()}

    print(f"\nPrompt of {ids.shape[1]} tokens, bundled model, median of {args.repeats}\n")
    print(f"| prefill forward pass | seconds | speed vs {base_name} |")
    print("|---|---|---|")
    for name, row in results["prefill"].items():
        print(f"| {name} | {row['seconds']:.3f} | {row['speed_vs_fp32']:.2f}x |")
    before = results["first_token"]["fp32 prefill (before)"]
    print(f"\n| first token, one long prompt, {args.threads} threads | seconds | vs before |")
    print("|---|---|---|")
    for name, seconds in results["first_token"].items():
        print(f"| {name} | {seconds:.3f} | {seconds / before:.2f}x |")
    print(f"\nbf16 prefill (from {DEFAULT_BF16_PREFILL_FROM_TOKENS} tokens) kept the {args.tokens}-token greedy answer: "
          f"{results['same_greedy_answer']}")
    print(f"\n| long prompt joins {args.streams} decoding answers | longest token gap of theirs | its first token |")
    print("|---|---|---|")
    for name, row in results["join"].items():
        print(f"| {name} | {row['max_gap']:.3f} s | {row['ttft']:.3f} s |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
