"""Training benchmark on this machine, with the bundled model (or --base-model):

- training throughput at the same thread count (default 1, the worker's), one whole
  epoch of the same examples each, variants interleaved A B C D A B C D in one run:
  today's padded batches ("padded", the recipe before packing), packed batches
  ("packed", training/dataset.py pack: no padding, the shared system-turn prefix
  computed once, the output layer only where an answer token is predicted, the
  base model's side of the KL term cached), and each under bf16 autocast;
  medians of the per-step times, ratios against "padded", and the largest
  difference of the loss curves (same seed, same batches);
- the judging cost per correction and for the canary, and from both the
  estimated wall time of a whole retrain job on 24 and 200 corrections
  (selection run + refit + judging), before (padded) and after (the default);
- optionally (--measure-job N) a whole retrain job on N corrections, timed
  through the TrainingManager as the server starts one;
- adapter swap time in the serving engine, and decode speed of the serving
  engine while a retrain runs beside it, against idle, as a ratio (goal ≥ 0.7):
  the retrain is a real job started by the TrainingManager (child process, its
  default threads and nice level, and with idle_threads 2).

Prints the tables (with load averages) and writes JSON with --json.

    python -m benchmarks.bench_training                          # about 15 minutes on 2 quiet cores
    python -m benchmarks.bench_training --training-only --json training.json
    python -m benchmarks.bench_training --training-only --measure-job 24
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

from benchmarks import fact_sets
from benchmarks.adapters import save_recipe_shaped_adapter
from benchmarks.base_model import add_model_flags, base_model
from benchmarks.timing import load_average

QUESTION = [{"role": "user", "content": "Tell me about the history of the bicycle."}]


def examples(n: int) -> list[dict]:
    """n short question/answer examples like users' corrections (the fact set, repeated with numbers)."""
    facts = fact_sets.training_facts()
    rows = []
    for i in range(n):
        fact = facts[i % len(facts)]
        suffix = f" (case {i})" if i >= len(facts) else ""
        rows.append({"input": [{"role": "user", "content": fact["question"] + suffix}], "output": fact["answer"]})
    return rows


# Training variants compared at the same thread count, interleaved in one run. "padded" is the
# recipe before packing (random batches, right-padded, logits over every position, an extra base-model
# forward for the KL term at every step).
# Each variant names both fields, since the defaults (bf16 on) would otherwise leak into the fp32 ones.
VARIANTS = {
    "padded": {"packed": False, "bf16": False},
    "padded_bf16": {"packed": False, "bf16": True},
    "packed": {"packed": True, "bf16": False},
    "packed_bf16": {"packed": True, "bf16": True},
}
BASELINE = "padded"


def time_run(ref, overrides: dict, threads: int, rows: list[dict], steps: int) -> dict:
    """One training run of `steps` steps from a fresh base model: per-step times (the first step,
    which pays for allocation and warm-up, left out of the median), the losses, the run's wall time."""
    import torch
    from transformers import TrainerCallback

    from core.models import load_base_model
    from training.config import TrainConfig
    from training.finetune import train_adapter

    torch.set_num_threads(threads)
    model, tokenizer = load_base_model(ref)
    config = TrainConfig(**{**overrides, "max_steps": steps})
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    started = time.perf_counter()
    _, result = train_adapter(model, tokenizer, rows, config, callbacks=[Clock()])
    wall = time.perf_counter() - started
    durations = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
    return {
        "step_seconds": durations,
        "losses": result.losses,
        "tokens_per_step": result.tokens / max(1, result.steps),
        "wall_seconds": wall,
    }


def compare_training(ref, threads: int, count: int, rounds: int, variants: dict = VARIANTS) -> dict:
    """Each variant trains one whole epoch of the same examples (same seed, so the same batches in the
    same order), A B C D A B C D ..., at the same thread count; medians and ratios against the baseline."""
    from training.config import TrainConfig
    from training.dataset import load_replay

    rows = examples(count) + load_replay(TrainConfig().replay_examples)
    steps = math.ceil(len(rows) / TrainConfig().batch_size)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    loads = [load_average()]
    for _ in range(rounds):
        for name, overrides in variants.items():
            runs[name].append(time_run(ref, overrides, threads, rows, steps))
            loads.append(load_average())
    out: dict = {"threads": threads, "examples": len(rows), "steps_per_run": steps, "rounds": rounds,
                 "load_average_1min": [x[0] for x in loads], "variants": {}}
    for name, results in runs.items():
        per_step = statistics.median(d for r in results for d in r["step_seconds"][1:])
        tokens = results[0]["tokens_per_step"]
        out["variants"][name] = {
            "settings": variants[name],
            "seconds_per_step": round(per_step, 3),
            "tokens_per_second": round(tokens / per_step, 1),
            "run_wall_seconds": round(statistics.median(r["wall_seconds"] for r in results), 1),
            "losses": [round(x, 4) for x in results[0]["losses"]],
        }
    base = out["variants"][BASELINE]
    for name, row in out["variants"].items():
        row["tokens_per_second_ratio"] = round(row["tokens_per_second"] / base["tokens_per_second"], 2)
        row["max_loss_difference"] = round(max(abs(a - b) for a, b in zip(row["losses"], base["losses"])), 4)
    return out


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


def job_minutes(n: int, per_step: float, evaluation: dict, heldout_share: float = 0.2, config=None) -> dict:
    """Wall time of one retrain on n corrections with `config` (default: the default recipe), from the
    timed parts: a selection run (when >= 5 are held out) and the refit, then the judging (candidate and
    serving answer every correction and the canary). Each correction trains as 1 + rewordings + statement
    rows and each replay row as 1 + replay_rewordings (the most training/augment.py makes), plus the "not
    known" rows (TrainConfig.unknown_attributes) training/augment.py makes for this bench's corrections
    (the 24 facts repeated: each name is shared by about n / 24 of them)."""
    from training.augment import unknown_rows
    from training.config import EvalConfig, TrainConfig
    from training.dataset import load_replay
    from training.finetune import total_steps

    config = config or TrainConfig()
    replay = len(load_replay(config.replay_examples)) * (1 + config.replay_rewordings)
    per_correction = 1 + config.rewordings + config.statement_prompts
    heldout = round(n * heldout_share)
    corrections = examples(n)
    unknown_selection = len(unknown_rows(corrections[: n - heldout], config.unknown_attributes))
    unknown_final = len(unknown_rows(corrections, config.unknown_attributes))
    selection = (total_steps((n - heldout) * per_correction + unknown_selection + replay, config)
                 if heldout >= EvalConfig().heldout_min_items else 0)
    final = total_steps(n * per_correction + unknown_final + replay, config)
    judging = 2 * n * evaluation["seconds_per_correction"] + 2 * evaluation["seconds_for_canary"]
    return {
        "corrections": n,
        "unknown_rows": {"selection": unknown_selection, "final": unknown_final},
        "steps": {"selection": selection, "final": final},
        "minutes_training": round((selection + final) * per_step / 60, 1),
        "minutes_judging": round(judging / 60, 1),
        "minutes_total_estimated": round(((selection + final) * per_step + judging) / 60, 1),
    }


def measure_job(ref, n: int, timeout: float = 3600) -> dict:
    """A whole retrain on n corrections, timed: the worker the server starts (its default threads and
    nice level), the default recipe and gate; splits fall by the store's hash, as for users' corrections."""
    from storage import Store
    from training.manager import TrainingManager

    with tempfile.TemporaryDirectory(prefix="bench-job-") as scratch:
        store = Store(Path(scratch) / "exemplar.db")
        for row in examples(n):
            store.add_example(row["input"], row["output"], source="correction", rejected="I do not know.")
        manager = TrainingManager(store, Path(scratch), ref.path)
        loads = [load_average()]
        started = time.perf_counter()
        job_id = manager.start()
        view = manager.wait(job_id, timeout=timeout)
        minutes = (time.perf_counter() - started) / 60
        loads.append(load_average())
        metrics = store.get_job(job_id).get("metrics") or {}
        store.close()
    return {
        "corrections": n,
        "status": view["status"],
        "minutes": round(minutes, 1),
        "timings": metrics.get("timings"),
        "learned": metrics.get("learned"),
        "heldout": metrics.get("heldout"),
        "canary": {k: (metrics.get("canary") or {}).get(k) for k in ("n", "score")},
        "load_average": loads,
    }


def decode_rate(engine, tokens: int, runs: int = 3) -> float:
    from bot.serving.base import GenerationParams

    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        generation = engine.generate(QUESTION, GenerationParams(max_new_tokens=tokens))
        rates.append(generation.completion_tokens / (time.perf_counter() - started))
    return statistics.median(rates)


def measure_swap_and_contention(ref, data_dir: Path, decode_tokens: int, rounds: int = 2) -> dict:
    from bot.serving.engine import Engine
    from core.models import load_base_model
    from storage import Store
    from training.config import TrainConfig
    from training.manager import TrainingManager

    model, tokenizer = load_base_model(ref)
    engine = Engine(model, tokenizer, base_name=ref.name)

    # Two adapters shaped like the default recipe's, to swap between.
    for name, seed in (("v1", 1), ("v2", 2)):
        save_recipe_shaped_adapter(ref, data_dir / "adapters" / name, seed)
    swaps = {
        "first_load_v1": engine.activate("v1", data_dir / "adapters" / "v1"),
        "load_v2": engine.activate("v2", data_dir / "adapters" / "v2"),
        "back_to_v1": engine.activate("v1", data_dir / "adapters" / "v1"),
        "to_base": engine.activate(None),
    }
    engine.activate(None)

    store = Store(data_dir / "exemplar.db")
    for row in examples(64):
        store.add_example(row["input"], row["output"], source="admin", split="train")
    manager = TrainingManager(store, data_dir, ref.path)

    def during_retrain(overrides: dict) -> tuple[float, dict]:
        """Decode speed while a real retrain job (a child process) trains beside the engine."""
        job_id = manager.start({"max_steps": 10_000, **overrides})
        try:
            deadline = time.monotonic() + 600
            while (manager.job_view(job_id)["progress"].get("step") or 0) < 1:
                if time.monotonic() > deadline or manager.job_view(job_id)["status"] not in ("queued", "running"):
                    raise RuntimeError(f"the retrain did not start: {manager.job_view(job_id)}")
                time.sleep(1)
            return decode_rate(engine, decode_tokens), manager.job_view(job_id)["progress"]
        finally:
            manager.cancel(job_id)
            manager.wait(job_id, timeout=300)

    # Idle, then a retrain with the default settings (threads fixed at `threads`), idle again, then one
    # with idle_threads 2 (a second thread while the server is idle, dropped at the next step once it decodes).
    # The retrain in fp32 too (bf16 is the default), taking turns with the default: bf16 steps are shorter,
    # so the question is whether they take more of the server's core.
    config = TrainConfig()
    idle = [decode_rate(engine, decode_tokens)]
    defaults, fp32 = [], []
    for _ in range(rounds):
        rate, progress = during_retrain({})
        defaults.append(rate)
        idle.append(decode_rate(engine, decode_tokens))
        fp32.append(during_retrain({"bf16": False})[0])
        idle.append(decode_rate(engine, decode_tokens))
    default = statistics.median(defaults)
    two, _ = during_retrain({"idle_threads": 2})
    idle.append(decode_rate(engine, decode_tokens))
    store.close()
    idle_rate = statistics.median(idle)
    return {
        "adapter_swap_seconds": {k: round(v, 3) for k, v in swaps.items()},
        "decode_tokens_per_second_idle": round(idle_rate, 1),
        "decode_tokens_per_second_during_retrain": round(default, 1),
        "decode_ratio_during_retrain": round(default / idle_rate, 2),
        "decode_ratio_during_retrain_idle_threads_2": round(two / idle_rate, 2),
        "decode_ratio_during_retrain_each_round": {"default": [round(r / idle_rate, 2) for r in defaults],
                                                   "fp32": [round(r / idle_rate, 2) for r in fp32]},
        "decode_ratio_during_retrain_fp32": round(statistics.median(fp32) / idle_rate, 2),
        "retrain_child": {"threads": config.threads, "idle_threads": config.idle_threads, "nice": config.nice,
                          "step_reached": progress.get("step")},
        "load_average": load_average(),
    }


def default_variant() -> str:
    """The variant the default TrainConfig runs."""
    from training.config import TrainConfig
    from training.finetune import default_bf16

    config = TrainConfig()
    bf16 = default_bf16() if config.bf16 is None else config.bf16  # empty: chosen for this machine
    return next(name for name, v in VARIANTS.items() if all(getattr(config, k) == x for k, x in v.items() if k != "bf16")
                and v.get("bf16", False) == bf16)


def print_tables(results: dict) -> None:
    comparison = results.get("training_batches")
    if comparison:
        print(f"\n| training, one epoch of {comparison['examples']} examples, {comparison['threads']} thread(s), "
              f"{comparison['rounds']} interleaved rounds | tokens/s | s/step | ratio | max loss diff |")
        print("|---|---|---|---|---|")
        for name, row in comparison["variants"].items():
            print(f"| {name}{' (default)' if name == results.get('default_variant') else ''} | "
                  f"{row['tokens_per_second']} | {row['seconds_per_step']} | {row['tokens_per_second_ratio']:.2f}x | "
                  f"{row['max_loss_difference']} |")
        print(f"load average (1 min) during the runs: {comparison['load_average_1min']}")
    jobs = results.get("job_estimates")
    if jobs:
        print("\n| retrain job (estimated from the timed steps and judging) | corrections | steps | training min | judging min | total min |")
        print("|---|---|---|---|---|---|")
        for label, rows in jobs.items():
            for row in rows:
                steps = "+".join(str(v) for v in row["steps"].values())
                print(f"| {label} | {row['corrections']} | {steps} | {row['minutes_training']} | "
                      f"{row['minutes_judging']} | {row['minutes_total_estimated']} |")
    measured = results.get("measured_jobs")
    for row in measured or []:
        print(f"\nmeasured job, {row['corrections']} corrections: {row['status']} in {row['minutes']} min "
              f"(phases {row['timings']}; load average {row['load_average']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the training comparison (the worker's default is 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the training comparison")
    parser.add_argument("--examples", type=int, default=64, help="examples (plus replay) in the training comparison")
    parser.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode measurement")
    parser.add_argument("--training-only", action="store_true",
                        help="only the training comparison and the job estimates (no serving measurements)")
    parser.add_argument("--serving-only", action="store_true",
                        help="only decode during a retrain (default bf16 and fp32 taking turns, --rounds times)")
    parser.add_argument("--measure-job", type=int, action="append", default=[], metavar="N",
                        help="also run a whole retrain job on N corrections and time it (repeatable; 24 takes minutes)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()

    ref = base_model(args)
    import torch

    default_threads = torch.get_num_threads()
    results: dict = {"machine": {"torch_threads_default": default_threads, "load_average_start": load_average()},
                     "default_variant": default_variant()}
    if args.serving_only:
        with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
            results["serving"] = measure_swap_and_contention(ref, Path(scratch), args.decode_tokens, args.rounds)
        print(json.dumps(results, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    comparison = compare_training(ref, args.threads, args.examples, args.rounds)
    results["training_batches"] = comparison
    # Whole-job estimates: the worker trains at 1 thread, so the timed steps are at --threads (default 1).
    evaluation = measure_evaluation(ref, 1)
    results["judging_1_thread"] = evaluation
    from training.config import TrainConfig

    per_step = {name: row["seconds_per_step"] for name, row in comparison["variants"].items()}
    plain = TrainConfig(rewordings=0, statement_prompts=0, replay_rewordings=0, epochs=10.0)
    default = TrainConfig()
    augmented = f"{default.rewordings} rewordings + {default.statement_prompts} statement, {default.epochs:g} epochs"
    results["job_estimates"] = {
        f"before ({BASELINE}, plain, {per_step[BASELINE]} s/step)":
            [job_minutes(n, per_step[BASELINE], evaluation, config=plain) for n in (24, 200)],
        f"packed, plain ({per_step['packed']} s/step)":
            [job_minutes(n, per_step["packed"], evaluation, config=plain) for n in (24, 200)],
        f"default ({results['default_variant']}, {augmented}, {per_step[results['default_variant']]} s/step)":
            [job_minutes(n, per_step[results["default_variant"]], evaluation) for n in (24, 200)],
        "default + 3 'not known' rows per entity (unknown_attributes=3), same s/step":
            [job_minutes(n, per_step[results["default_variant"]], evaluation, config=TrainConfig(unknown_attributes=3))
             for n in (24, 200)],
    }
    torch.set_num_threads(default_threads)
    if args.measure_job:
        results["measured_jobs"] = [measure_job(ref, n) for n in args.measure_job]
    if not args.training_only:
        with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
            results["serving"] = measure_swap_and_contention(ref, Path(scratch), args.decode_tokens, args.rounds)
    results["machine"]["load_average_end"] = load_average()
    print(json.dumps(results, indent=2))
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if "serving" in results:
        ratio = results["serving"]["decode_ratio_during_retrain"]
        two = results["serving"]["decode_ratio_during_retrain_idle_threads_2"]
        print(f"\nDecode during a retrain: {ratio:.2f}x idle with the default threads "
              f"({results['serving']['retrain_child']['threads']}), {two:.2f}x with idle_threads 2; "
              f"goal >= 0.70; load average {results['serving']['load_average']}.")
    print("Job times for 24 and 200 corrections are estimated from the timed steps and judging unless marked measured.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
