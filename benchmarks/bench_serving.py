"""Serving benchmark through the real HTTP API, with a trained-shaped LoRA
adapter active, against plain `transformers` `generate` in the same run.

It starts `python launch.py serve` (bundled model, or --base-model) on a free
loopback port, makes an adapter shaped like the default training recipe's,
records it as the active version (the server's watcher merges it), then:

- one stream, short (~48-token) and long (~675-token) prompt: tokens/s and
  time to first token, against plain `generate` on the same base model in this
  process (the server idle meanwhile), as the model loads (fp32), and on a bf16
  copy of it (the dtype the server decodes one answer in on a CPU with native
  bf16), so the serving path's own cost shows apart from the dtype's gain;
- 1, 4, 8 and 16 simultaneous streaming chats (`/v1/chat/completions`):
  aggregate tokens/s, and p50/p95 time to first token.

With --few-shot 1,8,16 the server also holds 54 approved examples (the 30
corrections about three entities of tests/fewshot_entities.json and the 24
facts of tests/fewshot_facts.json, as a user's approved corrections), and that
many chats at once ask reworded questions about them (each a text the server
has not embedded yet), with few-shot on and off in turn: time to first token
and aggregate tokens/s, since a few-shot answer first embeds its question and
then prefills the demonstrations.

Greedy, --tokens new tokens (default 128). Each figure is the median of
--repeats runs; ratios are against figures from this same run.

    python -m benchmarks.bench_serving                  # about 6 minutes on 2 cores
    python -m benchmarks.bench_serving --repeats 1 --tokens 64 --json out.json
    python -m benchmarks.bench_serving --llama-cpp /work/bench-venv/bin/python   # also llama.cpp (benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import fact_sets
from benchmarks.adapters import save_recipe_shaped_adapter
from benchmarks.base_model import add_model_flags, base_model
from benchmarks.prompts import long_question
from benchmarks.server import ServerProcess
from benchmarks.timing import median_of, percentile, run_at_once

SHORT = "Tell me about the history of the bicycle, from the first designs to the bikes of today."
# Asked by many streaming chats at once through the API.
API_QUESTIONS = [
    "Tell me about the history of the bicycle.",
    "How do I boil an egg?",
    "Write a short poem about the sea.",
    "What is photosynthesis?",
    "Name three famous painters and one work by each.",
    "Why is the sky blue?",
    "Give me a tip for learning a language.",
    "What does a compiler do?",
    "Explain what a prime number is.",
    "Suggest a name for a ferry company.",
    "How do plants drink water?",
    "Describe a cat in a few sentences.",
    "What is the water cycle?",
    "Who was Ada Lovelace?",
    "How does a bicycle stay upright?",
    "What makes bread rise?",
]


def post_stream(url: str, content: str, tokens: int, few_shot: bool = False) -> dict:
    """One streaming chat; returns time to first piece, total seconds and completion tokens."""
    body = json.dumps({
        "model": "exemplar", "messages": [{"role": "user", "content": content}], "stream": True,
        "max_tokens": tokens, "temperature": 0, "few_shot": few_shot,
        "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    first = None
    usage = None
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content") and first is None:
                    first = time.perf_counter() - started
    total = time.perf_counter() - started
    return {"ttft": first if first is not None else total, "seconds": total,
            "tokens": usage["completion_tokens"], "prompt_tokens": usage["prompt_tokens"]}


def concurrent(url: str, n: int, tokens: int, questions: list[str] = API_QUESTIONS, few_shot: bool = False) -> dict:
    """`n` streaming chats at once: aggregate tokens/s, time to first token (p50, p95, slowest), errors."""

    def one(i: int) -> dict | None:
        try:
            return post_stream(url, questions[i % len(questions)], tokens, few_shot)
        except Exception:  # noqa: BLE001 - counted, not raised: the benchmark reports errors
            return None

    results, wall = run_at_once(one, n)
    done = [r for r in results if r]
    ttfts = [r["ttft"] for r in done]
    return {
        "aggregate_tok_s": sum(r["tokens"] for r in done) / wall,
        "ttft_p50": statistics.median(ttfts) if ttfts else None,
        "ttft_p95": percentile(ttfts, 0.95) if ttfts else None,
        "ttft_max": max(ttfts) if ttfts else None,
        "errors": n - len(done),
    }


class PlainGenerate:
    """transformers `generate` on the base model, batch 1, loaded once in this process (fp32, as it
    loads, or a bf16 copy)."""

    def __init__(self, ref, threads: int, bf16: bool = False):
        import torch

        from core.models import load_base_model

        torch.set_num_threads(threads)
        self.model, self.tokenizer = load_base_model(ref, device="cpu")
        if bf16:
            self.model = self.model.to(torch.bfloat16)

    def __call__(self, prompt_text: str, tokens: int) -> dict:
        import torch
        from transformers import TextIteratorStreamer

        from core.prompts import encode, render_prompt

        tokenizer = self.tokenizer
        ids = torch.tensor([encode(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": prompt_text}]))])
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        out: dict = {}

        def run() -> None:
            with torch.inference_mode():
                out["ids"] = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                    temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, streamer=streamer)

        started = time.perf_counter()
        worker = threading.Thread(target=run)
        worker.start()
        first = None
        for piece in streamer:
            if piece and first is None:
                first = time.perf_counter() - started
        worker.join()
        seconds = time.perf_counter() - started
        n = out["ids"].shape[1] - ids.shape[1]
        return {"ttft": first, "tok_s": n / seconds, "tokens": n, "prompt_tokens": ids.shape[1]}


# Runs in the benchmark-only Python that has llama_cpp (never the app's): loads the GGUF once, then
# answers one JSON request per line ({"prompt", "tokens"}) with one JSON result per line.
LLAMA_CPP_WORKER = r"""
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), n_ctx=2048,
            verbose=False)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    started = time.perf_counter()
    first, count = None, 0
    llm.reset()  # no prompt reuse from the previous request: every run prefills the whole prompt
    for chunk in llm.create_completion(request["prompt"], max_tokens=request["tokens"], temperature=0.0,
                                       stream=True):
        count += 1
        if first is None and chunk["choices"][0]["text"]:
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    print(json.dumps({"ttft": first if first is not None else seconds, "seconds": seconds, "tokens": count,
                      "tok_s": count / seconds}), flush=True)
"""


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the bundled GGUF, in a separate benchmark-only Python, fed the
    exact prompt tokens the engine renders (same template, same system turn), greedy."""

    def __init__(self, python: str, gguf: Path, threads: int):
        self.process = subprocess.Popen([python, "-c", LLAMA_CPP_WORKER, str(gguf), str(threads)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"llama.cpp did not start under {python} (is llama-cpp-python installed there?)")

    def __call__(self, prompt_text: str, tokens: int, tokenizer) -> dict:
        from core.prompts import encode, render_prompt

        prompt = encode(tokenizer, render_prompt(tokenizer, [{"role": "user", "content": prompt_text}]))
        self.process.stdin.write(json.dumps({"prompt": prompt, "tokens": tokens}) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def make_active_adapter(ref, data_dir: Path) -> str:
    """An adapter shaped like the default recipe's (non-zero B), recorded as the active version."""
    from storage import Store
    from training.registry import commit_version, new_temp_dir

    staging = new_temp_dir(data_dir)
    save_recipe_shaped_adapter(ref, staging, seed=0)
    store = Store(data_dir / "exemplar.db")
    try:
        row = commit_version(store, data_dir, staging, base_model=ref.name)
        store.activate_version(row["version"])
    finally:
        store.close()
    return row["version"]


def approve_fewshot_examples(data_dir: Path) -> list[str]:
    """Store the few-shot benchmark's facts as approved examples; return reworded questions about them
    (each correction's paraphrase and held-out wording: 60 texts)."""
    from storage import Store

    others = fact_sets.fewshot_facts()["facts"]
    facts = [f for e in fact_sets.fewshot_entities() for f in e["facts"]]
    store = Store(data_dir / "exemplar.db")
    try:
        store.add_examples([{"input": f["question"], "output": f["answer"], "source": "admin", "status": "approved"}
                            for f in others + facts])
    finally:
        store.close()
    return [f["paraphrase"] for f in facts] + [f["held_out"] for f in facts]


def start_server(data_dir: Path, base_model: str, threads: int, extra: list[str]) -> ServerProcess:
    # With --few-shot's 54 approved examples the server would start a retrain of its own mid-run.
    flags = ["--threads", str(threads), "--no-retrain-enabled", *extra]
    return ServerProcess(data_dir, base_model, *flags).wait_ready()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(parser)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--llama-cpp", nargs="?", const=sys.executable, default=None, metavar="PYTHON",
                        help="also time llama.cpp on the bundled GGUF, run by PYTHON (a benchmark-only venv with "
                             "llama-cpp-python, e.g. /work/bench-venv/bin/python; default: this Python)")
    parser.add_argument("--few-shot", default="", metavar="LEVELS",
                        help="also time LEVELS (e.g. 1,8,16) chats at once with few-shot on and off, 54 examples approved")
    parser.add_argument("--server-args", default="", help="extra flags for launch.py serve, e.g. '--bf16-from-batch 0'")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    from core.models import bundled_gguf_path, load_base_model

    ref = base_model(args)
    _, tokenizer = load_base_model(ref, device="cpu")
    long_text = long_question(tokenizer)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        data_dir = Path(scratch)
        version = make_active_adapter(ref, data_dir)
        reworded = approve_fewshot_examples(data_dir) if args.few_shot else []
        server = start_server(data_dir, ref.path, args.threads, args.server_args.split())
        url = server.url
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the watcher merges the adapter soon after start
                with urllib.request.urlopen(url + "/healthz") as response:
                    if json.loads(response.read())["model_version"] == version:
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"the server never served {version}")
            post_stream(url, "Hello", 8)  # warm-up
            if reworded:
                time.sleep(10)  # the server embeds the approved examples' questions after it starts (niced)
            # API, plain generate (and llama.cpp) take turns, so all meet the same background load.
            plain = PlainGenerate(ref, args.threads)
            plain16 = PlainGenerate(ref, args.threads, bf16=True)
            cpp = LlamaCpp(args.llama_cpp, bundled_gguf_path(), args.threads) if args.llama_cpp else None
            for name, text in (("short", SHORT), ("long", long_text)):
                api_runs, plain_runs, plain16_runs, cpp_runs = [], [], [], []
                if cpp:
                    cpp("Hello", 8, tokenizer)  # warm-up
                for _ in range(args.repeats):
                    api_runs.append(post_stream(url, text, args.tokens))
                    plain_runs.append(plain(text, args.tokens))
                    plain16_runs.append(plain16(text, args.tokens))
                    if cpp:
                        cpp_runs.append(cpp(text, args.tokens, tokenizer))
                if cpp_runs:
                    results[f"llama_cpp_{name}"] = {"tok_s": median_of(cpp_runs, "tok_s"), "ttft": median_of(cpp_runs, "ttft"),
                                                    "tokens": median_of(cpp_runs, "tokens")}
                results[f"api_one_stream_{name}"] = {
                    "tok_s": statistics.median(r["tokens"] / r["seconds"] for r in api_runs),
                    "ttft": median_of(api_runs, "ttft"), "prompt_tokens": api_runs[0]["prompt_tokens"],
                }
                results[f"plain_generate_{name}"] = {"tok_s": median_of(plain_runs, "tok_s"), "ttft": median_of(plain_runs, "ttft"),
                                                     "prompt_tokens": plain_runs[0]["prompt_tokens"]}
                results[f"plain_generate_bf16_{name}"] = {"tok_s": median_of(plain16_runs, "tok_s"),
                                                          "ttft": median_of(plain16_runs, "ttft"),
                                                          "prompt_tokens": plain16_runs[0]["prompt_tokens"]}
            del plain, plain16
            if cpp:
                cpp.close()
            # Each round runs every concurrency once, so each ratio to one stream comes from the same stretch of time.
            levels = [int(c) for c in args.concurrency.split(",")]
            rounds = [{n: concurrent(url, n, args.tokens) for n in levels} for _ in range(args.repeats)]
            for n in levels:
                runs = [r[n] for r in rounds]
                results[f"api_concurrency_{n}"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                if 1 in levels:
                    results[f"api_concurrency_{n}"]["vs_one_stream"] = statistics.median(
                        r[n]["aggregate_tok_s"] / r[1]["aggregate_tok_s"] for r in rounds)
                    results[f"api_concurrency_{n}"]["slowest_ttft_vs_one_stream"] = statistics.median(
                        r[n]["ttft_max"] / r[1]["ttft_max"] for r in rounds)
            # Few-shot on and off take turns per level; every round asks texts not asked before.
            asked = 0
            for n in [int(c) for c in args.few_shot.split(",") if c]:
                for few_shot in (False, True):
                    questions = [reworded[(asked + i) % len(reworded)] for i in range(n)]
                    asked += n
                    results[f"few_shot_{'on' if few_shot else 'off'}_{n}"] = concurrent(
                        url, n, args.tokens, questions, few_shot)
        finally:
            server.stop()
        results["adapter_version"] = version

    print(f"\nExemplar HTTP API ({'adapter ' + results['adapter_version']} active), greedy, {args.tokens} new tokens, "
          f"{args.threads} threads, median of {args.repeats}\n")
    print("| streams at once | aggregate tok/s | vs 1 stream | TTFT p50 | TTFT p95 | slowest TTFT vs 1 stream | errors |")
    print("|---|---|---|---|---|---|---|")
    for key, row in results.items():
        if key.startswith("api_concurrency_"):
            n = key.rsplit("_", 1)[-1]
            print(f"| {n} | {row['aggregate_tok_s']:.1f} | {row.get('vs_one_stream', float('nan')):.2f}x | "
                  f"{row['ttft_p50']:.2f} s | {row['ttft_p95']:.2f} s | "
                  f"{row.get('slowest_ttft_vs_one_stream', float('nan')):.1f}x | {row['errors']} |")
    print("\n| one stream | prompt tokens | tok/s | first token | tok/s vs plain generate | vs plain generate, bf16 copy |")
    print("|---|---|---|---|---|---|")
    for name in ("short", "long"):
        api, plain = results[f"api_one_stream_{name}"], results[f"plain_generate_{name}"]
        plain16 = results[f"plain_generate_bf16_{name}"]
        print(f"| Exemplar API, {name} prompt | {api['prompt_tokens']} | {api['tok_s']:.1f} | {api['ttft']:.2f} s | "
              f"{api['tok_s'] / plain['tok_s']:.2f}x | {api['tok_s'] / plain16['tok_s']:.2f}x |")
        print(f"| plain generate, {name} prompt | {plain['prompt_tokens']} | {plain['tok_s']:.1f} | "
              f"{plain['ttft']:.2f} s | 1.00x | |")
        print(f"| plain generate on a bf16 copy, {name} prompt | {plain16['prompt_tokens']} | {plain16['tok_s']:.1f} | "
              f"{plain16['ttft']:.2f} s | {plain16['tok_s'] / plain['tok_s']:.2f}x | 1.00x |")
        if f"llama_cpp_{name}" in results:
            cpp = results[f"llama_cpp_{name}"]
            print(f"| llama.cpp, {name} prompt | | {cpp['tok_s']:.1f} | {cpp['ttft']:.2f} s | "
                  f"{cpp['tok_s'] / plain['tok_s']:.2f}x | {cpp['tok_s'] / plain16['tok_s']:.2f}x |")
    levels = [key.rsplit("_", 1)[-1] for key in results if key.startswith("few_shot_on_")]
    if levels:
        print("\nWith 54 approved examples, reworded questions about them (a new text each), few-shot off / on:")
        print("| chats at once | aggregate tok/s off / on | first token p50 off / on | slowest first token off / on | errors |")
        print("|---|---|---|---|---|")
        for n in levels:
            off, on = results[f"few_shot_off_{n}"], results[f"few_shot_on_{n}"]
            print(f"| {n} | {off['aggregate_tok_s']:.1f} / {on['aggregate_tok_s']:.1f} | {off['ttft_p50']:.2f} / "
                  f"{on['ttft_p50']:.2f} s | {off['ttft_max']:.2f} / {on['ttft_max']:.2f} s | "
                  f"{off['errors']} / {on['errors']} |")
    if "llama_cpp_short" in results and "api_concurrency_8" in results:
        ratio = results["api_concurrency_8"]["aggregate_tok_s"] / results["llama_cpp_short"]["tok_s"]
        results["api_8_vs_llama_cpp_one_stream"] = ratio
        print(f"\n8 at once through the API vs llama.cpp's one stream: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
