"""Does a correction answer its own question, and only that? (issue 20)

Stores every correction of tests/fewshot_pairs.json (6 entities x 10 attributes, each with two
paraphrases and a minimal-pair near miss: the same sentence with one attribute changed) and of
tests/fewshot_entities.json (3 x 10, a paraphrase and a held-out wording each, and near misses),
beside the 24 facts of tests/fewshot_facts.json, as approved corrections. Then asks every
paraphrase, near miss and unanswered question through ChatService.answer, the path a chat takes,
with the server's defaults (few-shot on, greedy, the bundled model), and counts:

- paraphrases *asserted*: the answer states the question's own fact (an approved answer served
  word for word, or the model's answer); *shown as related*: the honest reply quotes it;
  *stated another answer*: an approved answer served for it, or another correction's fact
  stated, that is not its own;
- near misses *asserted*: the answer states the fact of another correction of the same entity
  (shown as related, in the honest reply, does not count); *honest*: the honest reply;
- unanswered questions (about an entity, answered by none of its corrections): honest, or left
  to the model (which then makes something up: it knows nothing of these entities);
- false refusals: paraphrases given the honest reply (with or without their fact shown);
- retrieval top-1: the paraphrase's own correction is the most similar candidate;
- the time to decide (retrieval, ranking, coverage) per question, median; the embedder's memory.

Each set's tune and held-out parts are reported apart (fewshot_pairs.json holds two entities
out; fewshot_entities.json's held-out wordings were written before any tuning).

    nice -n 10 python -m benchmarks.bench_grounding [--set pairs|entities|all] [--show] [--json out.json]
    python -m benchmarks.bench_grounding --config few_shot_min_similarity=0.5 --config grounded=false
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import fact_sets
from benchmarks.base_model import add_data_dir_flag
from benchmarks.timing import load_average

HONEST_OPENINGS = ("I don't have an answer to that yet", "I don't know that yet")


def questions() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the corrections to store, the questions to ask) from both sets."""
    corrections, asks = [], []
    pairs = json.loads((fact_sets.FACTS_DIR / "fewshot_pairs.json").read_text())["entities"]
    for entity in pairs:
        split = "pairs " + entity["split"]
        for fact in map(dict, entity["facts"]):
            fact["entity"] = entity["name"]
            corrections.append(fact)
            for wording in fact["paraphrases"]:
                asks.append({"set": split, "kind": "paraphrase", "question": wording, "fact": fact})
            asks.append({"set": split, "kind": "near miss", "question": fact["near_miss"], "entity": entity["name"]})
        for question in entity["unanswered"]:
            asks.append({"set": split, "kind": "unanswered", "question": question, "entity": entity["name"]})
    for entity in fact_sets.fewshot_entities():
        for fact in map(dict, entity["facts"]):
            fact["entity"] = entity["name"]
            corrections.append(fact)
            asks.append({"set": "entities tune", "kind": "paraphrase", "question": fact["paraphrase"], "fact": fact})
            asks.append({"set": "entities held_out", "kind": "paraphrase", "question": fact["held_out"], "fact": fact})
        for question in entity["near_misses"]:
            asks.append({"set": "entities tune", "kind": "near miss", "question": question, "entity": entity["name"]})
    return corrections, asks


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_flag(parser)
    parser.add_argument("--set", choices=["pairs", "entities", "all"], default="all")
    parser.add_argument("--config", action="append", default=[], help="a ServeConfig override, key=value (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--json", type=Path, default=None, help="also write every answer here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from bot.chat.service import ChatService
    from bot.serving.base import GenerationParams
    from bot.serving.engine import Engine
    from core.config import ServeConfig
    from storage import Store

    started = time.perf_counter()
    engine = Engine.load(None, args.data_dir)
    store = Store(":memory:")
    store.add_examples([{"input": f["question"], "output": f["answer"], "source": "seed"}
                        for f in fact_sets.fewshot_facts()["facts"]])
    corrections, asks = questions()
    if args.set != "all":
        asks = [a for a in asks if a["set"].startswith(args.set)]
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "correction"} for f in corrections])
    facts_of: dict[str, list[str]] = {}
    for example_id, fact in zip(ids, corrections, strict=True):
        fact["id"] = example_id
        facts_of.setdefault(fact["entity"], []).append(fact["fact"])
    overrides = dict(item.split("=", 1) for item in args.config)
    config = ServeConfig(**{k: parse_value(v) for k, v in overrides.items()})
    service = ChatService(engine, store, config)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    service.warm_few_shot()

    decide_ms: list[float] = []
    for ask in asks:
        messages = [{"role": "user", "content": ask["question"]}]
        t0 = time.perf_counter()
        if hasattr(service, "consult"):
            service.consult(messages)
        decide_ms.append((time.perf_counter() - t0) * 1000)
        answer = service.answer(messages, params=params)
        text = "".join(answer)
        honest = text.startswith(HONEST_OPENINGS)
        ask["answer"], ask["honest"], ask["direct"] = text, honest, answer.from_example is not None
        if ask["kind"] == "paraphrase":
            own = ask["fact"]["fact"].lower() in text.lower()
            ask["asserted"], ask["related"] = own and not honest, own and honest
            others = [f for f in facts_of[ask["fact"]["entity"]] if f != ask["fact"]["fact"] and f.lower() in text.lower()]
            ask["wrong"] = not honest and not own and (ask["direct"] or bool(others))  # another answer stated
            # The most similar of the word score's candidates (bot/serving/retrieval.py RECALL).
            top = max(store.search_examples(ask["question"], limit=20), default=None,
                      key=lambda e: service.embedder.similarity(ask["question"], e["input"][-1]["content"]))
            ask["top1"] = bool(top and top["id"] == ask["fact"]["id"])
        else:
            others = [f for f in facts_of[ask["entity"]] if f.lower() in text.lower()]
            ask["asserted"] = bool(others) and not honest
            ask["neighbour_facts"] = others
        if args.show:
            mark = "HONEST" if honest else "DIRECT" if ask["direct"] else "MODEL"
            print(f"[{ask['set']}] {ask['kind']:<10} {mark:<6} {'WRONG ' if ask['kind'] != 'paraphrase' and ask['asserted'] else ''}"
                  f"{ask['question']!r} -> {text[:140]!r}", flush=True)

    def share(got: int, of: int) -> str:
        return f"{got}/{of} ({got / of:.0%})" if of else "-"

    print(f"\n{len(corrections)} corrections stored (+24 other facts); {time.perf_counter() - started:.0f} s; "
          f"load average {load_average()[0]:.1f}; config overrides {overrides or 'none'}")
    header = ["set", "paraphrases asserted", "asserted or related", "stated another answer", "false refusals",
              "retrieval top-1",
              "near misses asserted", "near misses honest", "unanswered honest"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in dict.fromkeys(a["set"] for a in asks):
        rows = [a for a in asks if a["set"] == name]
        para = [a for a in rows if a["kind"] == "paraphrase"]
        near = [a for a in rows if a["kind"] == "near miss"]
        unanswered = [a for a in rows if a["kind"] == "unanswered"]
        print("| " + " | ".join([
            name,
            share(sum(a["asserted"] for a in para), len(para)),
            share(sum(a["asserted"] or a["related"] for a in para), len(para)),
            share(sum(a["wrong"] for a in para), len(para)),
            share(sum(a["honest"] for a in para), len(para)),
            share(sum(a["top1"] for a in para), len(para)),
            share(sum(a["asserted"] for a in near), len(near)),
            share(sum(a["honest"] for a in near), len(near)),
            share(sum(a["honest"] for a in unanswered), len(unanswered)),
        ]) + " |")
    parameters = sum(p.numel() * p.element_size() for p in service.embedder.model.parameters())
    print(f"deciding (word score, sentence vectors, coverage): {statistics.median(decide_ms):.1f} ms median per "
          f"question, {max(decide_ms):.0f} ms at most (vectors cached after the first ask); "
          f"embedder weights {parameters / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(asks, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
