"""Training benchmark on this machine, with the bundled model (or --base-model):

- training throughput at the same thread count, one whole epoch each: today's
  random padded batches against length-grouped batches (`length_grouped`), as a ratio;
- training throughput (tokens/s, s/step) of the default recipe, measured over a
  few steps, and the wall time for 200 examples × the default epochs
  (extrapolated from the measured s/step: said so in the output);
- the judging cost per correction and for the canary, and from both the
  estimated wall time of a whole retrain job on 24 and 200 corrections
  (selection run + refit + judging);
- adapter swap time in the serving engine (first load of a version, and
  switching back to one seen before);
- decode speed of the serving engine while a retrain runs beside it, against
  idle, as a ratio (goal ≥ 0.7): the retrain is a real job started by the
  TrainingManager (child process, its default threads and nice level).

    python benchmarks/bench_training.py                  # about 4 minutes on 2 cores
    python benchmarks/bench_training.py --steps 4 --decode-tokens 48
    python benchmarks/bench_training.py --training-only --json training.json   # the batching comparison only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FACTS = Path(__file__).resolve().parents[1] / "tests" / "training_facts.jsonl"
QUESTION = [{"role": "user", "content": "Tell me about the history of the bicycle."}]


def examples(n: int) -> list[dict]:
    """n short question/answer examples like users' corrections (the fact set, repeated with numbers)."""
    facts = [json.loads(line) for line in FACTS.read_text().splitlines()]
    rows = []
    for i in range(n):
        fact = facts[i % len(facts)]
        suffix = f" (case {i})" if i >= len(facts) else ""
        rows.append({"input": [{"role": "user", "content": fact["question"] + suffix}], "output": fact["answer"]})
    return rows


def measure_training(ref, steps: int, threads: int, grouped: bool = True, count: int = 64) -> dict:
    import torch

    from core.models import load_base_model
    from training.config import TrainConfig
    from training.dataset import load_replay
    from training.finetune import total_steps, train_adapter

    torch.set_num_threads(threads)
    model, tokenizer = load_base_model(ref)
    config = TrainConfig(length_grouped=grouped)
    rows = examples(count) + load_replay(config.replay_examples)
    if steps <= 0:  # one whole epoch, so the tokens counted are exactly the tokens trained on
        steps = math.ceil(len(rows) / config.batch_size)
    warm = TrainConfig(**{**config.as_dict(), "max_steps": 1})
    train_adapter(model, tokenizer, rows, warm)  # first step pays for allocation and kernel warm-up
    model, tokenizer = load_base_model(ref)
    timed = TrainConfig(**{**config.as_dict(), "max_steps": steps})
    _, result = train_adapter(model, tokenizer, rows, timed)
    per_step = result.train_seconds / result.steps
    full_steps = total_steps(200 + len(load_replay(config.replay_examples)), config)
    return {
        "threads": threads,
        "length_grouped": grouped,
        "steps_measured": result.steps,
        "seconds_per_step": round(per_step, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "steps_for_200_examples": full_steps,
        "minutes_for_200_examples_extrapolated": round(full_steps * per_step / 60, 1),
    }


def measure_evaluation(ref, threads: int, n: int = 16) -> dict:
    """Seconds the judging of a job costs: per correction (answer + margin, for the candidate and the
    serving version, and the base model's margin) and for the canary (candidate and serving)."""
    import torch

    from core.models import load_base_model
    from training.config import EvalConfig, TrainConfig
    from training.evaluate import canary_answers, judge_answers, load_canary, margins

    torch.set_num_threads(threads)
    model, tokenizer = load_base_model(ref)
    config, max_length = EvalConfig(), TrainConfig().max_length
    rows = [{**e, "id": i, "rejected": "I do not know."} for i, e in enumerate(examples(n))]
    started = time.perf_counter()
    judge_answers(model, tokenizer, rows, config)
    margins(model, tokenizer, rows, max_length=max_length, batch_size=config.batch_size)
    per_item = (time.perf_counter() - started) / n
    started = time.perf_counter()
    canary_answers(model, tokenizer, load_canary(), config)
    canary = time.perf_counter() - started
    return {"seconds_per_correction": round(per_item, 2), "seconds_for_canary": round(canary, 1)}


def job_minutes(n: int, per_step: float, evaluation: dict, heldout_share: float = 0.2) -> dict:
    """Wall time of one retrain on n corrections with the default recipe, from the timed parts:
    a selection run (when >= 5 are held out) and the refit, then the judging (candidate and serving
    answer every correction and the canary)."""
    from training.config import EvalConfig, TrainConfig
    from training.dataset import load_replay
    from training.finetune import total_steps

    config = TrainConfig()
    replay = len(load_replay(config.replay_examples))
    heldout = round(n * heldout_share)
    selection = total_steps(n - heldout + replay, config) if heldout >= EvalConfig().heldout_min_items else 0
    final = total_steps(n + replay, config)
    judging = 2 * n * evaluation["seconds_per_correction"] + 2 * evaluation["seconds_for_canary"]
    return {
        "corrections": n,
        "steps": {"selection": selection, "final": final},
        "minutes_training": round((selection + final) * per_step / 60, 1),
        "minutes_judging": round(judging / 60, 1),
        "minutes_total_estimated": round(((selection + final) * per_step + judging) / 60, 1),
    }


def decode_rate(engine, tokens: int, runs: int = 3) -> float:
    from bot.engine import GenerationParams

    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        generation = engine.generate(QUESTION, GenerationParams(max_new_tokens=tokens))
        rates.append(generation.completion_tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def measure_swap_and_contention(ref, data_dir: Path, decode_tokens: int) -> dict:
    import torch

    from bot.engine import Engine
    from core.models import load_base_model
    from storage import Store
    from training.config import TrainConfig
    from training.manager import TrainingManager
    from training.finetune import add_lora

    model, tokenizer = load_base_model(ref)
    engine = Engine(model, tokenizer, base_name=ref.name)

    # Two adapters shaped like the default recipe's, to swap between.
    for name, seed in (("v1", 1), ("v2", 2)):
        scratch, _ = load_base_model(ref)
        torch.manual_seed(seed)
        peft_model = add_lora(scratch, TrainConfig())
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                torch.nn.init.normal_(param, std=1e-3)
        peft_model.save_pretrained(data_dir / "adapters" / name)
    swaps = {
        "first_load_v1": engine.activate("v1", data_dir / "adapters" / "v1"),
        "load_v2": engine.activate("v2", data_dir / "adapters" / "v2"),
        "back_to_v1": engine.activate("v1", data_dir / "adapters" / "v1"),
        "to_base": engine.activate(None),
    }
    engine.activate(None)

    idle = decode_rate(engine, decode_tokens)
    store = Store(data_dir / "exemplar.db")
    for row in examples(64):
        store.add_example(row["input"], row["output"], source="admin", split="train")
    manager = TrainingManager(store, data_dir, ref.path)
    job_id = manager.start({"max_steps": 10_000})
    try:
        deadline = time.monotonic() + 300
        while (manager.job_view(job_id)["progress"].get("step") or 0) < 1:
            if time.monotonic() > deadline or manager.job_view(job_id)["status"] not in ("queued", "running"):
                raise RuntimeError(f"the retrain did not start: {manager.job_view(job_id)}")
            time.sleep(1)
        busy = decode_rate(engine, decode_tokens)
        progress = manager.job_view(job_id)["progress"]
    finally:
        manager.cancel(job_id)
        manager.wait(job_id, timeout=300)
        store.close()
    config = TrainConfig()
    return {
        "adapter_swap_seconds": {k: round(v, 3) for k, v in swaps.items()},
        "decode_tokens_per_second_idle": round(idle, 1),
        "decode_tokens_per_second_during_retrain": round(busy, 1),
        "decode_ratio_during_retrain": round(busy / idle, 2),
        "retrain_child": {"threads": config.threads, "nice": config.nice, "step_reached": progress.get("step")},
    }


def print_grouping(results: dict) -> None:
    grouping = results.get("training_batches")
    if not grouping:
        return
    print("\n| training batches (one epoch, same threads) | tokens/s | s/step | ratio |")
    print("|---|---|---|---|")
    for name in ("random_padded", "length_grouped"):
        row = grouping[name]
        ratio = row["tokens_per_second"] / grouping["random_padded"]["tokens_per_second"]
        print(f"| {name.replace('_', ' ')} | {row['tokens_per_second']} | {row['seconds_per_step']} | {ratio:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default=None, help="model folder or hub id (default: the bundled model)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the bundled model is converted")
    parser.add_argument("--steps", type=int, default=4, help="training steps to time")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode measurement")
    parser.add_argument("--no-compare-grouping", dest="compare_grouping", action="store_false",
                        help="skip timing random padded batches against length-grouped ones")
    parser.add_argument("--examples", type=int, default=64, help="examples (plus replay) in the batching comparison")
    parser.add_argument("--training-only", action="store_true", help="only the training throughput comparison")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    from core.models import resolve_base_model

    ref = resolve_base_model(args.base_model, args.data_dir)
    import torch

    results = {"machine": {"torch_threads_default": torch.get_num_threads()}}
    threads = torch.get_num_threads()
    if args.compare_grouping:
        # Same threads, same examples, one whole epoch each: today's random padded batches vs length-grouped.
        padded = measure_training(ref, 0, threads, grouped=False, count=args.examples)
        grouped = measure_training(ref, 0, threads, grouped=True, count=args.examples)
        results["training_batches"] = {
            "random_padded": padded,
            "length_grouped": grouped,
            "tokens_per_second_ratio": round(grouped["tokens_per_second"] / padded["tokens_per_second"], 2),
        }
    for threads in sorted({1, torch.get_num_threads()}) if not args.training_only else []:
        results[f"training_{threads}_thread"] = measure_training(ref, args.steps, threads)
    torch.set_num_threads(results["machine"]["torch_threads_default"])
    if args.training_only:
        print(json.dumps(results, indent=2))
        print_grouping(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    # Whole-job estimates from the timed 1-thread steps and judging (the worker runs at 1 thread).
    evaluation = measure_evaluation(ref, 1)
    results["judging_1_thread"] = evaluation
    per_step = results["training_1_thread"]["seconds_per_step"]
    results["job_estimates_1_thread"] = [job_minutes(n, per_step, evaluation) for n in (24, 200)]
    torch.set_num_threads(results["machine"]["torch_threads_default"])
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        results["serving"] = measure_swap_and_contention(ref, Path(scratch), args.decode_tokens)
    print(json.dumps(results, indent=2))
    print_grouping(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ratio = results["serving"]["decode_ratio_during_retrain"]
    print(f"\nDecode during a retrain: {ratio:.2f}x idle (goal >= 0.70). "
          "Wall times for 200 examples are extrapolated from the measured seconds per step.")
    return 0 if not math.isnan(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
