"""Generalisation to new wordings: each augmentation avenue of training/augment.py, trained on the same facts.

For every avenue a fresh LoRA is trained from the base model through the recipe's own row builder
(training/recipe.py `training_rows`, so the augmentation measured is the one a job runs), on made-up facts
the base model cannot know (tests/training_facts.jsonl, the scenario test's 24), plus the replay rows.
Then, with few-shot off and greedy decoding, exactly as the gate judges:

- trained: the questions as trained;
- paraphrases: the fact set's own paraphrase of each question (written last session; the issue's 55%);
- fresh: two more wordings per fact written for this benchmark (benchmarks/generalise_paraphrases.jsonl),
  never trained on and never used to design the templates' frames... though some share a frame with them
  ("Tell me who ...", "X's Y?"): the output counts how many equal a trained wording exactly (none should);
- canary: the 40 general questions of training/canary.jsonl.

An answer counts when it names the fact's keyword (the scenario test's check); the gate's verdict
(training/evaluate.is_correct) is printed beside it. Training time is the Trainer's wall time; every figure
is printed with the load average, and the time ratio is against the plain run of the same process.

    nice -n 10 python -m benchmarks.bench_generalise --json gen.json
    python -m benchmarks.bench_generalise --avenues base,plain --facts 8    # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import fact_sets
from benchmarks.base_model import add_model_flags, base_model
from benchmarks.timing import load_average

# Each avenue: TrainConfig overrides. The augmented ones train about as many steps as the plain one (fewer
# epochs over more rows), so the comparison is at equal time; "epochs" None means: scale to the plain run's steps.
AVENUES: dict[str, dict] = {
    "base": {},  # no training: what the base model answers
    "plain": {},  # the recipe before augmentation: the question as asked, 10 epochs, fp32 (PLAIN below)
    "templates": {"rewordings": 3, "epochs": None},
    "templates+statements": {"rewordings": 3, "statement_prompts": 1, "epochs": None},
    "templates+statements+replay": {"rewordings": 3, "statement_prompts": 1, "replay_rewordings": 2, "epochs": None},
    "templates-10-epochs": {"rewordings": 3, "statement_prompts": 1},
    # Cheaper settings of the same avenue (fewer wordings, fewer epochs, bf16 autocast), to find a default.
    "2rw+1st-6ep": {"rewordings": 2, "statement_prompts": 1, "epochs": 6},
    "2rw+1st-6ep-bf16": {"rewordings": 2, "statement_prompts": 1, "epochs": 6, "bf16": True},
    "2rw+1st-5ep-bf16": {"rewordings": 2, "statement_prompts": 1, "epochs": 5, "bf16": True},
    "1rw+1st-6ep-bf16": {"rewordings": 1, "statement_prompts": 1, "epochs": 6, "bf16": True},
    "1rw+1st-5ep-bf16": {"rewordings": 1, "statement_prompts": 1, "epochs": 5, "bf16": True},
    "1rw+1st-4ep-bf16": {"rewordings": 1, "statement_prompts": 1, "epochs": 4, "bf16": True},
    "1st-6ep-bf16": {"statement_prompts": 1, "epochs": 6, "bf16": True},
    "2rw-6ep-bf16": {"rewordings": 2, "epochs": 6, "bf16": True},
    "3rw+1st-5ep-bf16": {"rewordings": 3, "statement_prompts": 1, "epochs": 5, "bf16": True},
    "plain-bf16": {"bf16": True},
}
# The avenues that set every augmentation field: the others start from TrainConfig's defaults, which may
# themselves turn augmentation on; "plain" must be the question as asked whatever the defaults are.
PLAIN = {"rewordings": 0, "statement_prompts": 0, "replay_rewordings": 0, "bf16": False, "epochs": 10.0}


def load(n: int) -> tuple[list[dict], list[dict], list[dict]]:
    facts = fact_sets.training_facts()[:n]
    asked = {f["question"] for f in facts}
    fresh = [r for r in fact_sets.read_jsonl(fact_sets.FRESH_PARAPHRASES) if r["question"] in asked]
    return facts, [{"question": f["paraphrase"], **{k: f[k] for k in ("answer", "keyword")}} for f in facts], [
        {"question": r["paraphrase"], "answer": r["answer"], "keyword": r["keyword"]} for r in fresh
    ]


def examples(facts: list[dict]) -> list[dict]:
    return [
        {"id": i, "split": "train", "input": [{"role": "user", "content": f["question"]}], "output": f["answer"]}
        for i, f in enumerate(facts)
    ]


def judge(model, tokenizer, items: list[dict], eval_config) -> dict:
    from training.evaluate import judge_answers

    rows = [{"id": i, "input": [{"role": "user", "content": it["question"]}], "output": it["answer"]} for i, it in enumerate(items)]
    judged = judge_answers(model, tokenizer, rows, eval_config)
    keyword = [it["keyword"].lower() in j["answer"].lower() for it, j in zip(items, judged)]
    return {
        "n": len(items),
        "keyword": sum(keyword),
        "verdict": sum(j["correct"] for j in judged),
        "answers": [{"question": it["question"], "answer": j["answer"], "keyword_hit": k} for it, j, k in zip(items, judged, keyword)],
    }


def run_avenue(name: str, ref, facts, paraphrases, fresh, threads: int, max_steps: int | None = None,
               seed: int = 0) -> dict:
    import torch

    from core.models import load_base_model
    from training import recipe
    from training.config import EvalConfig, TrainConfig
    from training.dataset import load_replay
    from training.evaluate import canary_answers, load_canary
    from training.finetune import total_steps, train_adapter

    torch.set_num_threads(threads)
    model, tokenizer = load_base_model(ref)
    eval_config = EvalConfig()
    overrides = {**PLAIN, **AVENUES[name], "seed": seed}
    base_config = TrainConfig(**PLAIN)
    plan = recipe.Plan(
        config=base_config, eval_config=eval_config, base_model=None, examples=examples(facts), heldout=[],
        replay=load_replay(base_config.replay_examples), canary=load_canary(), active_name="base", serving=None,
        contradictions={},
    )
    plain_steps = total_steps(len(recipe.training_rows(plan, plan.examples)), base_config)
    result = {"avenue": name, "load_before": load_average()[0]}
    trained_wordings: set[str] = set()
    if name != "base":
        if overrides.get("epochs", 0) is None:
            probe = TrainConfig(**{**overrides, "epochs": 1})
            rows = len(recipe.training_rows(recipe.Plan(**{**plan.__dict__, "config": probe}), plan.examples))
            overrides["epochs"] = round(plain_steps / total_steps(rows, probe), 2)
        plan.config = TrainConfig(**overrides, max_steps=max_steps)
        rows = recipe.training_rows(plan, plan.examples)
        trained_wordings = {r["input"][-1]["content"].lower() for r in rows}
        model, train = train_adapter(model, tokenizer, rows, plan.config)
        result.update(
            config=overrides, rows=len(rows), steps=train.steps, train_seconds=round(train.train_seconds, 1),
            seconds_per_step=round(train.train_seconds / max(1, train.steps), 2), final_loss=train.final_loss,
        )
    started = time.perf_counter()
    result["trained"] = judge(model, tokenizer, [{"question": f["question"], "answer": f["answer"], "keyword": f["keyword"]} for f in facts], eval_config)
    result["paraphrases"] = judge(model, tokenizer, paraphrases, eval_config)
    result["fresh"] = judge(model, tokenizer, fresh, eval_config)
    canary = canary_answers(model, tokenizer, plan.canary, eval_config)
    result["canary"] = {"n": canary["n"], "hits": sum(canary["hits"]), "misses": canary["misses"]}
    result["judge_seconds"] = round(time.perf_counter() - started, 1)
    result["test_wordings_trained"] = sum(p["question"].lower() in trained_wordings for p in paraphrases + fresh)
    result["load_after"] = load_average()[0]
    return result


def table(results: list[dict]) -> str:
    plain = next((r for r in results if r["avenue"] == "plain"), None)
    lines = [
        "| avenue | rows × epochs = steps | trained | paraphrases (fact set) | fresh wordings | canary | training time (ratio to plain) | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def cell(m: dict) -> str:
        return f"{m['keyword']}/{m['n']} ({100 * m['keyword'] / m['n']:.0f}%; gate {m['verdict']})"

    for r in results:
        if "steps" in r:
            epochs = r["config"].get("epochs", 10)
            shape = f"{r['rows']} × {epochs:g} = {r['steps']}"
            ratio = f" ({r['train_seconds'] / plain['train_seconds']:.2f}×)" if plain and "train_seconds" in plain else ""
            took = f"{r['train_seconds']:.0f} s, {r['seconds_per_step']} s/step{ratio}"
        else:
            shape, took = "no training", "–"
        lines.append(
            f"| {r['avenue']} | {shape} | {cell(r['trained'])} | {cell(r['paraphrases'])} | {cell(r['fresh'])} | "
            f"{r['canary']['hits']}/{r['canary']['n']} | {took} | {r['load_before']}–{r['load_after']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    parser.add_argument("--avenues", default=",".join(a for a in AVENUES if a != "templates-10-epochs"),
                        help=f"comma-separated, from: {', '.join(AVENUES)}")
    parser.add_argument("--facts", type=int, default=24, help="how many of the 24 facts to train on")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="TrainConfig.seed of every run (LoRA init, data order)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON (after each avenue)")
    args = parser.parse_args()
    unknown = [a for a in args.avenues.split(",") if a not in AVENUES]
    if unknown:
        parser.error(f"unknown avenue(s): {', '.join(unknown)}; known: {', '.join(AVENUES)}")

    ref = base_model(args)
    facts, paraphrases, fresh = load(args.facts)
    results = []
    for name in args.avenues.split(","):
        results.append(run_avenue(name, ref, facts, paraphrases, fresh, args.threads, args.max_steps, args.seed))
        r = results[-1]
        print(f"{name}: trained {r['trained']['keyword']}/{r['trained']['n']}, paraphrases "
              f"{r['paraphrases']['keyword']}/{r['paraphrases']['n']}, fresh {r['fresh']['keyword']}/{r['fresh']['n']}, "
              f"canary {r['canary']['hits']}/{r['canary']['n']}, train {r.get('train_seconds', 0)} s, "
              f"load {r['load_before']}-{r['load_after']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"facts": len(facts), "threads": args.threads, "seed": args.seed, "results": results}, indent=1))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
