"""Does a thumbs-down teach? The preference stages (training/preference.py) against SFT alone.

One SFT run of the job's recipe on the scenario test's 24 made-up facts (tests/training_facts.jsonl), each
a correction whose rejected answer is the base model's own greedy answer; then, from a copy of that same
adapter, each objective's stage. Beside them, 16 general questions the bundled model answers wrongly
(PREFERENCE_QUESTIONS below): 8 are downvoted (KTO's undesirable rows), 8 are left unrated as controls.
Measured with few-shot off and greedy decoding, as the gate judges:

- corrections: the 24 facts answered (training/evaluate.is_correct), and their paraphrases (the fact set's
  own other wording of each question, never trained on);
- changed: downvoted (and control) answers whose first sentence is no longer the base model's;
- fall: the median fall of the base model's answer's log-probability per token, base → trained (nats);
  learned, not drift, when the downvoted answers fall by more than the controls (the target: 0.2 nats);
- canary: the 40 general questions, and how many the base model answers that the model lost;
- seconds: the stage's training time, and its ratio to the SFT run of the same process.

- near misses (--entities): bench_fewshot's 30 corrections about 3 entities replace the 24 facts, and its 27
  near misses are asked; after the SFT run, each near miss of one half that it answers with a neighbour's fact
  is downvoted as well (KTO's rows, as a user would turn it down). Counted: near misses answered with a
  neighbour's fact, in the downvoted half and in the other, never rated, half.

    nice -n 10 python -m benchmarks.bench_preference --json pref.json
    nice -n 10 python -m benchmarks.bench_preference --entities --variants sft+kto
    python -m benchmarks.bench_preference --variants sft+kto --lr 1e-4    # one variant
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from benchmarks import fact_sets
from benchmarks.base_model import add_model_flags, base_model
from benchmarks.timing import load_average

# Answered wrongly by the bundled model (greedy, few-shot off: "The capital of Turkey is Istanbul.", "The Titanic
# sank in 2014.", ...). Capitals and other facts are split 4 + 4 in each set.
PREFERENCE_QUESTIONS = {
    "downvoted": [
        "What is the capital of Turkey?", "What is the capital of Vietnam?", "What is the capital of Bolivia?",
        "What is the capital of Morocco?", "In which year did the Titanic sink?",
        "What is the largest planet in our solar system?", "What is the square root of 144?",
        "How many continents are there?",
    ],
    "controls": [
        "What is the capital of Switzerland?", "What is the capital of Brazil?", "What is the capital of Myanmar?",
        "What is the capital of Ivory Coast?", "How many planets are in our solar system?",
        "What is the smallest planet in our solar system?",
        "What is the freezing point of water in degrees Fahrenheit?", "Who composed the Fifth Symphony?",
    ],
}
GEN_TOKENS = 48


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def measure(model: Any, tokenizer: Any, examples: list[dict], wrong: dict[str, list[dict]],
            near: list[dict] | None = None) -> dict[str, Any]:
    from training.config import EvalConfig
    from training.evaluate import (
        answer_logprobs_per_token,
        canary_answers,
        first_sentence,
        generate_answers,
        judge_answers,
        load_canary,
    )

    model.eval()
    ec = EvalConfig()
    out: dict[str, Any] = {"corrections": sum(j["correct"] for j in judge_answers(model, tokenizer, examples, ec))}
    reworded = [{**e, "input": ask(e["paraphrase"])} for e in examples]
    out["paraphrases"] = sum(j["correct"] for j in judge_answers(model, tokenizer, reworded, ec))
    for part, rows in wrong.items():
        answers = generate_answers(model, tokenizer, [r["input"] for r in rows], max_new_tokens=GEN_TOKENS, batch_size=8)
        logps = answer_logprobs_per_token(model, tokenizer, [(r["input"], r["answer"]) for r in rows], max_length=512,
                                          batch_size=8)
        out[part] = [{"answer": a, "changed": first_sentence(a) != first_sentence(r["answer"]), "logp": lp}
                     for a, r, lp in zip(answers, rows, logps)]
    out["canary"] = canary_answers(model, tokenizer, load_canary(), ec)["hits"]
    if near:
        answers = generate_answers(model, tokenizer, [ask(n["question"]) for n in near], max_new_tokens=GEN_TOKENS,
                                   batch_size=8)
        out["near"] = [{"answer": a, "false_use": [f for f in n["neighbours"] if f.lower() in a.lower()]}
                       for a, n in zip(answers, near)]
    return out


def entity_set() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """bench_fewshot's 30 corrections about 3 entities, and its 27 near misses (the same entity, an attribute
    nothing corrects), each with the facts of its entity's corrections: an answer holding one of them is a
    near miss answered with a neighbour's fact."""
    entities = fact_sets.fewshot_entities()
    facts = [{**f, "entity": e["name"]} for e in entities for f in e["facts"]]
    near = [{"question": q, "neighbours": [f["fact"] for f in e["facts"]]} for e in entities for q in e["near_misses"]]
    return facts, near


def row(name: str, result: dict[str, Any], base: dict[str, Any], seconds: float, sft_seconds: float) -> dict[str, Any]:
    fall = {part: statistics.median(b["logp"] - r["logp"] for b, r in zip(base[part], result[part]))
            for part in ("downvoted", "controls")}
    return {
        "run": name,
        "corrections": result["corrections"],
        "paraphrases": result["paraphrases"],
        "downvoted_changed": sum(r["changed"] for r in result["downvoted"]),
        "controls_changed": sum(r["changed"] for r in result["controls"]),
        "downvoted_fall": round(fall["downvoted"], 3),
        "controls_fall": round(fall["controls"], 3),
        "difference": round(fall["downvoted"] - fall["controls"], 3),
        "canary_lost": sum(b and not r for b, r in zip(base["canary"], result["canary"])),
        # Near misses answered with a neighbour's fact: the half whose such answers users turned down after the
        # SFT run (KTO's rows), and the other half, never rated.
        **({"near_downvoted_half": sum(bool(n["false_use"]) for n in result["near"][0::2]),
            "near_other_half": sum(bool(n["false_use"]) for n in result["near"][1::2])} if "near" in result else {}),
        "seconds": round(seconds, 1),
        "time_ratio": round((sft_seconds + seconds) / sft_seconds, 2) if seconds else 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_flags(parser)
    parser.add_argument("--variants", default="sft+dpo,sft+kto,sft+kto:nokl",
                        help="comma-separated objectives after the SFT run; ':nokl' leaves the stage's KL-replay "
                             "term out, ':KEY=VALUE;KEY=VALUE' sets TrainConfig fields for that stage")
    parser.add_argument("--facts", type=int, default=24, help="corrections: the first N of the 24 facts")
    parser.add_argument("--entities", action="store_true",
                        help="corrections: bench_fewshot's 30 about 3 entities instead, and its 27 near misses asked; "
                             "after the SFT run, every other near miss it answers with a neighbour's fact is "
                             "downvoted too")
    parser.add_argument("--lr", type=float, default=None, help="preference_learning_rate (default: TrainConfig's)")
    parser.add_argument("--epochs", type=float, default=None, help="preference_epochs (default: TrainConfig's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)

    import torch

    from core.models import load_base_model
    from training import preference, recipe
    from training.config import EvalConfig, TrainConfig
    from training.dataset import load_replay
    from training.evaluate import generate_answers, load_canary
    from training.finetune import train_adapter

    torch.set_num_threads(args.threads)
    model, tokenizer = load_base_model(base_model(args))
    facts, near = entity_set() if args.entities else (fact_sets.training_facts()[: args.facts], [])
    rejected = generate_answers(model, tokenizer, [ask(f["question"]) for f in facts], max_new_tokens=GEN_TOKENS,
                                batch_size=8)
    examples = [{"id": i + 1, "split": "train", "source": "correction", "input": ask(f["question"]),
                 "output": f["answer"], "rejected": r, "paraphrase": f["paraphrase"]} for i, (f, r) in enumerate(zip(facts, rejected))]
    wrong = {}
    for part, questions in PREFERENCE_QUESTIONS.items():
        answers = generate_answers(model, tokenizer, [ask(q) for q in questions], max_new_tokens=GEN_TOKENS, batch_size=8)
        wrong[part] = [{"message_id": i, "input": ask(q), "answer": a} for i, (q, a) in enumerate(zip(questions, answers))]
    base = measure(model, tokenizer, examples, wrong, near)

    config = TrainConfig()
    plan = recipe.Plan(config=config, eval_config=EvalConfig(), base_model=None, examples=examples, heldout=[],
                       replay=load_replay(config.replay_examples), canary=load_canary(), active_name="base",
                       serving=None, contradictions={})
    started = time.perf_counter()
    peft_model, result = train_adapter(model, tokenizer, recipe.training_rows(plan, examples), config)
    sft_seconds = time.perf_counter() - started
    sft_state = recipe.adapter_state(peft_model)
    sft = measure(peft_model, tokenizer, examples, wrong, near)
    rows = [row("sft", sft, base, 0.0, sft_seconds)]
    # What a user would turn down after this retrain: the near misses of the first half it answers with a
    # neighbour's fact. The general downvoted answers stay measured apart (their fall), as without --entities.
    downvoted = wrong["downvoted"] + [
        {"message_id": 1000 + i, "input": ask(n["question"]), "answer": a["answer"]}
        for i, (n, a) in enumerate(zip(near, sft.get("near", []))) if i % 2 == 0 and a["false_use"]
    ]
    print(json.dumps({**rows[0], "sft_seconds": round(sft_seconds, 1), "load": load_average()}), flush=True)

    overrides = {k: v for k, v in (("preference_learning_rate", args.lr), ("preference_epochs", args.epochs)) if v}
    for variant in filter(None, args.variants.split(",")):
        objective, _, extra = variant.partition(":")
        recipe.restore_adapter_state(peft_model, sft_state)
        update = {key: json.loads(value) for key, _, value in (part.partition("=") for part in extra.split(";")) if value}
        stage_config = config.model_copy(update={"objective": objective, **overrides, **update})
        started = time.perf_counter()
        peft_model, stage = preference.train_preferences(
            peft_model, tokenizer, objective, examples, downvoted, stage_config,
            replay=() if extra == "nokl" else plan.replay,
        )
        seconds = time.perf_counter() - started
        rows.append(row(variant, measure(peft_model, tokenizer, examples, wrong, near), base, seconds, sft_seconds))
        print(json.dumps({**rows[-1], "stage": stage, "load": load_average()}), flush=True)

    halves = (len(near[0::2]), len(near[1::2]))
    print("\n| run | corrections | paraphrases | downvoted changed | controls changed | fall downvoted | fall controls | "
          "difference | canary lost |" + (" near misses misled: downvoted half | other half |" if near else "")
          + " seconds | time vs SFT |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if near else "") + "---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['corrections']}/{len(facts)} | {r['paraphrases']}/{len(facts)} | {r['downvoted_changed']}/8 | {r['controls_changed']}/8 | "
              f"{r['downvoted_fall']} | {r['controls_fall']} | {r['difference']} | {r['canary_lost']} | "
              + (f"{r['near_downvoted_half']}/{halves[0]} | {r['near_other_half']}/{halves[1]} | " if near else "")
              + f"{r['seconds']} | {r['time_ratio']}× |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "sft_seconds": sft_seconds, "train": result.as_dict()}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
