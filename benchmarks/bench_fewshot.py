"""Few-shot precision when many corrections share one entity (issue 9, item 6).

Stores the 30 corrections of tests/fewshot_entities.json (3 entities x 10
attributes) beside the 24 facts of tests/fewshot_facts.json, then asks each
correction's paraphrase and held-out wording, and 27 near misses (the same
entity, an attribute nothing corrects), with few-shot on, greedy, the bundled
SmolLM2-135M base model. For each method, in one run:

- paraphrase hit rate: the answer contains the paraphrase's own corrected fact;
- retrieval hit rate: its own correction is among the demonstrations (and
  first), and the model-use rate: answers with the fact among those that got it;
- near-miss false use: the answer contains the fact of another correction of
  the same entity; near misses retrieving anything at all.

Methods (METHODS): few-shot off, and the server's default (bot/serving/retrieval.py consult: an
approved answer stated only when it answers the question, else the honest reply with related
answers, else the model). A fact quoted in the honest reply is shown as related, not stated: it
counts neither as a hit nor as a near miss misled (benchmarks/bench_grounding.py counts those
apart). Identical prompts are generated once and shared between methods (greedy decoding makes them equal).

    nice -n 10 python -m benchmarks.bench_fewshot [--data-dir .cache/test-data] [--json bench_fewshot.json]
    nice -n 10 python -m benchmarks.bench_fewshot --no-held-out --methods "default"
    python -m benchmarks.bench_fewshot --retrieval-only     # the retrieval columns only, no answers

--trained measures the state a user reaches after the automatic retrain: a LoRA is first trained on the
30 entity corrections with the retrain job's own recipe and default TrainConfig (training/recipe.py:
prepare + train, so the rewordings, statements, bf16 and replay rows apply), merged into the engine the
answers come from (Engine.activate, as a promoted version is served), and then the methods run as above.
A near miss answered with a fact the model *learned* counts as misled exactly like one answered from a
demonstration. The 24 other stored facts are retrieved from but not trained on.

    nice -n 10 python -m benchmarks.bench_fewshot --trained --threads 2 --methods "few-shot off;default"

--recipes compares training recipes in one run: each (TrainConfig overrides on the default, e.g.
"default;unknown_attributes=3") is trained in turn, then every question is asked of each version in turn (its
adapter swapped in), the methods interleaved as above; rows are labelled "method [recipe]". The bench-only key
unknown_cap=N allows one "not known" row per N corrections (augment.CORRECTIONS_PER_UNKNOWN_ROW; the recipe's is
3), to measure a larger dose. --judge adds, per recipe and few-shot off, the 30 trained questions answered with
their fact and the canary (training/evaluate.py, as the gate asks them).

    nice -n 10 python -m benchmarks.bench_fewshot --trained --judge --threads 2 --methods "few-shot off;default" --recipes "default;unknown_attributes=3"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import fact_sets
from benchmarks.base_model import add_data_dir_flag
from benchmarks.timing import load_average

ENTITIES = fact_sets.fewshot_entities()
OTHER_FACTS = fact_sets.fewshot_facts()["facts"]

# name: k (0: few-shot off, nothing retrieved). "default" is what the server does (ChatService.reply_plan):
# an approved answer served word for word when one answers the question (bot/serving/retrieval.py consult),
# the honest reply with related answers when none does but some are close or name what it asks about,
# and otherwise the model, with the examples that answer as demonstrations.
METHODS = {"few-shot off": 0, "default": 3}


def build_store():
    from storage import Store

    store = Store(":memory:")
    store.add_examples([{"input": f["question"], "output": f["answer"], "source": "seed"} for f in OTHER_FACTS])
    facts = [dict(f, entity=e["name"]) for e in ENTITIES for f in e["facts"]]
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "correction"} for f in facts])
    for example_id, fact in zip(ids, facts):
        fact["id"] = example_id
    return store, facts


def parse_recipe(text: str) -> dict:
    """'default' -> {}; 'unknown_attributes=3,rewordings=0' -> TrainConfig overrides (values as JSON, else text)."""
    overrides = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if item == "default":
            continue
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def train_version(store, facts: list[dict], data_dir: Path, seed: int, adapter: str, overrides: dict | None = None,
                  max_steps: int | None = None, judge: bool = False) -> dict:
    """Train a version on the entity corrections as the retrain job does (`overrides` on its default TrainConfig)
    and save it to `adapter`; with `judge`, also the gate's own checks of it, few-shot off: the trained questions
    answered with their fact ("learned") and the canary."""
    from training import augment

    load_before = load_average()[0]
    overrides = dict(overrides or {})
    # Bench-only key: "not known" rows allowed per this many corrections (augment.CORRECTIONS_PER_UNKNOWN_ROW),
    # to measure a larger dose than the recipe allows itself.
    cap = overrides.pop("unknown_cap", augment.CORRECTIONS_PER_UNKNOWN_ROW)
    default_cap, augment.CORRECTIONS_PER_UNKNOWN_ROW = augment.CORRECTIONS_PER_UNKNOWN_ROW, cap
    try:
        return _train_version(store, facts, data_dir, seed, adapter, overrides, max_steps, judge, load_before)
    finally:
        augment.CORRECTIONS_PER_UNKNOWN_ROW = default_cap


def _train_version(store, facts, data_dir, seed, adapter, overrides, max_steps, judge, load_before) -> dict:
    from core.models import load_base_model, resolve_base_model
    from training import recipe

    config = {**overrides, "seed": seed, "max_steps": max_steps}
    plan = recipe.prepare(store, {"config": config})  # the job's default TrainConfig and replay rows
    own = {f["id"] for f in facts}
    examples = [e for e in plan.examples if e["id"] in own]
    model, tokenizer = load_base_model(resolve_base_model(None, data_dir))
    peft_model, result = recipe.train(model, tokenizer, plan, examples)
    peft_model.save_pretrained(adapter)  # as the worker does; the engine merges it as for a promoted version
    rows = recipe.training_rows(plan, examples)
    out = {"overrides": overrides or {}, "examples": len(examples), "rows": len(rows),
           "unknown_rows": [r["input"][-1]["content"] for r in rows if r.get("unknown_of")],
           "steps": result.steps, "train_seconds": result.train_seconds, "final_loss": result.final_loss,
           "config": vars(plan.config), "load_before": load_before}
    if judge:
        from training.evaluate import canary_answers, judge_answers

        peft_model.eval()
        asked = [{"id": f["id"], "input": [{"role": "user", "content": f["question"]}], "output": f["answer"]} for f in facts]
        judged = judge_answers(peft_model, tokenizer, asked, plan.eval_config)
        out["learned"] = [sum(f["fact"].lower() in j["answer"].lower() for f, j in zip(facts, judged)), len(facts)]
        canary = canary_answers(peft_model, tokenizer, plan.canary, plan.eval_config)
        out["canary"] = [sum(canary["hits"]), canary["n"]]
    out["load_after"] = load_average()[0]
    del peft_model, model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_flag(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and every answer here")
    parser.add_argument("--retrieval-only", action="store_true", help="skip generation")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--methods", default=";".join(METHODS), help="a ';'-separated subset of the methods")
    parser.add_argument("--no-held-out", action="store_true", help="ask the paraphrases only, not the held-out wordings")
    parser.add_argument("--held-out-only", action="store_true", help="ask the held-out wordings only (no near misses)")
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps a shared machine usable)")
    parser.add_argument("--trained", action="store_true",
                        help="first train and serve a version on the 30 entity corrections (the state after the retrain)")
    parser.add_argument("--seed", type=int, default=0, help="with --trained: TrainConfig.seed (LoRA init, data order)")
    parser.add_argument("--max-steps", type=int, default=None, help="with --trained: stop training after this many steps (smoke test)")
    parser.add_argument("--recipes", default="default",
                        help="with --trained: ';'-separated recipes, each 'default' or TrainConfig overrides such as "
                             "'unknown_attributes=3' or 'rewordings=0,statement_prompts=0'; each is trained in turn, and "
                             "every question is then asked of each (the adapter swapped in per question), methods interleaved")
    parser.add_argument("--judge", action="store_true",
                        help="with --trained: also the trained questions answered with their fact and the canary, per recipe")
    args = parser.parse_args()
    if args.trained and args.retrieval_only:
        parser.error("--trained changes the answers only; retrieval uses the base weights either way")

    import torch

    torch.set_num_threads(args.threads)

    from bot.serving.base import GenerationParams
    from bot.serving.embedder import shared_embedder
    from bot.serving.engine import Engine

    started = time.perf_counter()
    engine = Engine.load(None, args.data_dir)
    embedder = shared_embedder()
    embedders: dict = {}
    methods = {name: METHODS[name] for name in args.methods.split(";")}
    store, facts = build_store()
    import tempfile

    adapters_dir = tempfile.TemporaryDirectory(prefix="bench-fewshot-")
    recipes = [r.strip() for r in args.recipes.split(";")] if args.trained else [""]
    trained = {}
    for i, name in enumerate(recipes if args.trained else []):
        adapter = str(Path(adapters_dir.name) / f"r{i}")
        trained[name] = train_version(store, facts, args.data_dir, args.seed, adapter, parse_recipe(name),
                                      args.max_steps, args.judge)
        trained[name]["adapter"] = adapter
        print(f"trained {name!r}: {trained[name]['rows']} rows ({len(trained[name]['unknown_rows'])} 'not known'), "
              f"{trained[name]['steps']} steps, {trained[name]['train_seconds']:.0f} s, learned {trained[name].get('learned')}, "
              f"canary {trained[name].get('canary')}, load {trained[name]['load_before']}-{trained[name]['load_after']}", flush=True)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    asks = [("paraphrase", f[kind] if kind != "paraphrase" else f["paraphrase"], f, kind) for kind in ("paraphrase", "held_out")[: 1 if args.no_held_out else 2] for f in facts]
    if args.held_out_only:
        asks = [a for a in asks if a[3] == "held_out"]
    else:
        asks += [("near miss", q, {"entity": e["name"]}, "near_miss") for e in ENTITIES for q in e["near_misses"]]
    by_entity = {e["name"]: [f for f in facts if f["entity"] == e["name"]] for e in ENTITIES}
    answers: dict[str, str] = {}  # rendered prompt -> answer
    generate_s: list[float] = []

    def label(method: str, recipe_name: str) -> str:
        return f"{method} [{recipe_name}]" if len(recipes) > 1 else method

    rows = {label(name, r): [] for r in recipes for name in methods}
    for kind, question, fact, subset in asks:
        messages = [{"role": "user", "content": question}]
        for recipe_name in recipes:  # every recipe's version answers each question in turn
            if args.trained and engine.version != f"bench-{recipe_name}":
                engine.activate(f"bench-{recipe_name}", trained[recipe_name]["adapter"])
            ask_methods(engine, store, embedder, embedders, methods, messages, kind, question, fact, subset,
                        recipe_name, label, by_entity, answers, generate_s, rows, params, args)

    summarise(args, engine, facts, asks, rows, methods, trained, recipes, generate_s, started)
    adapters_dir.cleanup()


def ask_methods(engine, store, embedder, embedders, methods, messages, kind, question, fact, subset, recipe_name,
                label, by_entity, answers, generate_s, rows, params, args) -> None:
    from bot.serving.retrieval import consult, honest_reply

    for name, k in methods.items():  # interleaved
        t0 = time.perf_counter()
        found = consult(store, messages, embedder, k=k) if k else None
        served = found.answer if found else None
        honest = honest_reply(found) if found and not found.answering and (found.related or found.unknown) else None
        demos = [served] if served else found.answering if found else []
        retrieve_s = time.perf_counter() - t0
        row = {"kind": kind, "subset": subset, "question": question, "ids": [d["id"] for d in demos],
               "retrieve_ms": retrieve_s * 1000, "direct": bool(served)}
        others = [f for f in by_entity[fact["entity"]] if f is not fact]
        if kind == "paraphrase":
            row["retrieved"] = fact["id"] in row["ids"]
            row["retrieved_first"] = bool(demos) and demos[0]["id"] == fact["id"]
        else:
            row["retrieved_other"] = any(d["id"] in {f["id"] for f in others} for d in demos)
        if not args.retrieval_only:
            from core.prompts import render_prompt

            prompt = (f"direct:{served['id']}" if served else f"honest:{question}" if honest
                      else recipe_name + "\x00" + render_prompt(engine.tokenizer, messages, demos))
            if served:
                answers[prompt] = served["output"]
            elif honest:
                answers[prompt] = honest  # a related fact quoted here is shown as related, not stated
            elif prompt not in answers:
                t0 = time.perf_counter()
                answers[prompt] = engine.generate(messages, params, demos).text
                generate_s.append(time.perf_counter() - t0)
            text = answers[prompt].lower()
            row["answer"] = answers[prompt]
            if kind == "paraphrase":
                row["hit"] = fact["fact"].lower() in text and not honest  # stated, not shown as related
            else:
                row["false_use"] = [] if honest else [f["fact"] for f in others if f["fact"].lower() in text]
            if args.show:
                print(f"{label(name, recipe_name):<22} {question!r} -> {answers[prompt][:100]!r}", flush=True)
        rows[label(name, recipe_name)].append(row)


def summarise(args, engine, facts, asks, rows, methods, trained, recipes, generate_s, started) -> None:
    def share(got: int, of: int) -> str:
        return f"{got}/{of} ({got / of:.0%})" if of else "-"

    summary = {}
    for name, t in trained.items():
        print(f"\nrecipe {name!r}: trained on the {t['examples']} entity corrections ({t['rows']} rows with rewordings, "
              f"statements, {len(t['unknown_rows'])} 'not known' rows and replay; {t['steps']} steps, {t['train_seconds']:.0f} s, "
              f"seed {args.seed}, load average {t['load_before']}-{t['load_after']}); trained questions answered "
              f"with their fact {t.get('learned', '-')}, canary {t.get('canary', '-')}")
    if len(trained) > 1:
        first = next(iter(trained.values()))
        for name, t in trained.items():
            print(f"  {name!r}: rows {t['rows'] / first['rows']:.2f}x, steps {t['steps'] / first['steps']:.2f}x, "
                  f"training time {t['train_seconds'] / first['train_seconds']:.2f}x of {recipes[0]!r}")
    print(f"\n{len(facts)} corrections about {len(ENTITIES)} entities (+{len(OTHER_FACTS)} other facts stored); "
          f"load average {load_average()[0]:.1f}; {time.perf_counter() - started:.0f} s; "
          f"{len(generate_s)} distinct prompts generated")
    header = ["method", "paraphrase hit", "held-out hit", "retrieval hit (first)", "model use when retrieved",
              "near-miss false use", "near misses retrieving another fact"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, method_rows in rows.items():
        para = [r for r in method_rows if r["subset"] == "paraphrase"]
        held = [r for r in method_rows if r["subset"] == "held_out"]
        near = [r for r in method_rows if r["kind"] == "near miss"]
        both = para + held
        retrieved = [r for r in both if r["retrieved"]]
        ms = sorted(r["retrieve_ms"] for r in method_rows)[len(method_rows) // 2]
        first = sum(r["retrieved_first"] for r in both)
        entry = {
            "paraphrase_hit": [sum(r.get("hit", 0) for r in para), len(para)],
            "held_out_hit": [sum(r.get("hit", 0) for r in held), len(held)],
            "retrieval_hit": [len(retrieved), len(both)],
            "retrieval_hit_first": [first, len(both)],
            "model_use_when_retrieved": [sum(r.get("hit", 0) for r in retrieved), len(retrieved)],
            "near_miss_false_use": [sum(bool(r.get("false_use")) for r in near), len(near)],
            "near_miss_retrieving_other": [sum(r["retrieved_other"] for r in near), len(near)],
            "served_directly": [sum(r["direct"] for r in para), sum(r["direct"] for r in held), sum(r["direct"] for r in near)],
            "served_directly_right": [sum(r["direct"] and r["retrieved_first"] for r in para),
                                      sum(r["direct"] and r["retrieved_first"] for r in held)],
            "retrieve_ms_median": round(ms, 1),  # vectors are cached: the first re-ranking method pays for them
        }
        summary[name] = entry
        cells = [name] + [
            "-" if args.retrieval_only and key in ("paraphrase_hit", "held_out_hit", "model_use_when_retrieved", "near_miss_false_use")
            else share(*entry[key])
            for key in ("paraphrase_hit", "held_out_hit", "retrieval_hit", "model_use_when_retrieved",
                        "near_miss_false_use", "near_miss_retrieving_other")
        ]
        cells[3] += f" ({first})"
        print("| " + " | ".join(cells) + " |")
    for name, entry in summary.items():
        if methods[name.split(" [")[0]]:
            (p, h, n), (pr, hr) = entry["served_directly"], entry["served_directly_right"]
            print(f"{name}: approved answers served directly: paraphrases {p} ({pr} its own), "
                  f"held-out {h} ({hr} its own), near misses {n}")
    if generate_s:
        median_generate = sorted(generate_s)[len(generate_s) // 2]
        # The first method that uses the model's vectors computes them (they are cached for the others).
        reranked = [r["retrieve_ms"] for name, method_rows in rows.items()
                    if methods[name.split(" [")[0]] for r in method_rows]
        if reranked:
            first_ms = sorted(reranked[: len(asks)])[len(asks) // 2] / 1000
            print(f"cost: re-ranked retrieval {first_ms * 1000:.0f} ms median per question (vectors computed), "
                  f"an answer {median_generate:.2f} s median: {first_ms / median_generate:.2f}x of an answer's time")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows, "load_average": load_average()[0],
                                         "trained": trained, "seed": args.seed}, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
