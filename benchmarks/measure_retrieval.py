"""Measure few-shot retrieval on the fictional fact set (tests/fewshot_facts.json).

For each setting it reports how often a paraphrase of a stored question
retrieves that question's example (first, or among the k retrieved), and how
often unrelated questions and near misses (the same kind of question about
something else) retrieve anything. Settings: the 24 facts alone; each fact
alone in its store (1 example); the facts among 1,000 generated distractors.

    python -m benchmarks.measure_retrieval [--min-score 0.2] [--k 3] [--scores]
"""

from __future__ import annotations

import argparse
import random

from benchmarks import fact_sets
from bot.serving import retrieval as fewshot
from storage import Store

FACTS = fact_sets.fewshot_facts()


def distractors(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Questions shaped like the facts' (the same generic words, other names)."""
    rng = random.Random(seed)
    syllables = "ka lo ri ve th an mor del su pra gen ol ix ur ben tas vel om ni quar".split()

    def name() -> str:
        return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()

    templates = [
        "What is the capital of {n}?", "What is the population of {n}?", "Who founded the {n} Society?",
        "How tall is Mount {n}?", "What language is spoken in {n}?", "What currency does {n} use?",
        "When was the {n} Tower built?", "How do I reset my {n} password?", "What battery does the {n} clock use?",
        "What is the warranty period for the {n} blender?", "How long does shipping to {n} take?",
        "What port does the {n} daemon listen on?", "What is the refund window for {n} orders?",
        "Who wrote the novel {n}?", "What time does the {n} museum open?", "Who is the mayor of {n}?",
        "How do I pair my {n} headphones?", "Can I pay for {n} with a credit card?", "Why does my {n} keep restarting?",
        "What is the main export of {n}?", "How many moons does the planet {n} have?", "What colour is the flag of {n}?",
    ]  # fmt: skip
    return [(rng.choice(templates).format(n=name()), f"Answer {i}.") for i in range(n)]


def build(facts: list[dict], extra: list[tuple[str, str]] = ()) -> tuple[Store, dict[int, int]]:
    store = Store(":memory:")
    rows = [{"input": q, "output": a, "source": "seed"} for q, a in extra]
    rows += [{"input": f["question"], "output": f["answer"], "source": "seed"} for f in facts]
    ids = store.add_examples(rows)
    fact_ids = dict(zip(ids[len(extra) :], range(len(facts))))  # example id -> fact index
    return store, fact_ids


def ask(store: Store, question: str, k: int, min_score: float) -> list[dict]:
    return fewshot.retrieve(store, [{"role": "user", "content": question}], k=k, min_score=min_score)


def measure(label: str, store: Store, fact_ids: dict[int, int], facts: list[dict], k: int, min_score: float, show: bool):
    first = anywhere = total = 0
    misses = []
    for index, fact in enumerate(facts):
        for question in [fact["question"], *fact["paraphrases"]][1:]:
            found = ask(store, question, k, min_score)
            total += 1
            hit = [fact_ids.get(e["id"]) == index for e in found]
            first += bool(hit and hit[0])
            anywhere += any(hit)
            if show or not any(hit):
                misses.append(f"    {'hit ' if any(hit) else 'MISS'} {question!r}: " + ", ".join(f"{e['score']:.2f}" for e in found))
    held = [(i, q) for i, f in enumerate(facts) for q in f.get("held_out", [])]
    held_first = 0
    for index, question in held:
        found = ask(store, question, k, min_score)
        held_first += bool(found) and fact_ids.get(found[0]["id"]) == index
        if show or not (found and fact_ids.get(found[0]["id"]) == index):
            misses.append(f"    held-out {'hit ' if found and fact_ids.get(found[0]['id']) == index else 'MISS'} {question!r}: "
                          + ", ".join(f"{e['score']:.2f}" for e in found))
    same = sum(fact_ids.get(e["id"]) == i for i, f in enumerate(facts) for e in ask(store, f["question"], 1, min_score)[:1])
    unrelated = [ask(store, q, k, min_score) for q in FACTS["unrelated"]]
    near = [ask(store, q, k, min_score) for q in FACTS["near_misses"]]
    print(f"{label}")
    print(f"  same question first: {same}/{len(facts)}")
    print(f"  paraphrase retrieved first: {first}/{total} ({first / total:.0%}); among the {k}: {anywhere}/{total} ({anywhere / total:.0%})")
    if held:
        print(f"  held-out paraphrase retrieved first: {held_first}/{len(held)} ({held_first / len(held):.0%})")
    print(f"  unrelated questions retrieving anything: {sum(map(bool, unrelated))}/{len(unrelated)}")
    print(f"  near misses retrieving anything: {sum(map(bool, near))}/{len(near)}")
    if show:
        for q, found in zip(FACTS["unrelated"] + FACTS["near_misses"], unrelated + near):
            if found:
                print(f"    retrieved for {q!r}: " + ", ".join(f"{e['input_text']!r} {e['score']:.2f}" for e in found))
    for line in misses:
        print(line)
    return first, anywhere, total


def sweep(facts: list[dict], k: int, n_distractors: int, lower: bool) -> None:
    """For thresholds 0.05 to 0.5: paraphrases found among the k, and questions that wrongly retrieve anything."""
    thresholds = [t / 100 for t in range(5, 55, 5)]
    settings = {
        "1 example": [(*build([f]), [f]) for f in facts],
        f"{len(facts)} facts": [(*build(facts), facts)],
        f"+{n_distractors} distractors": [(*build(facts, distractors(n_distractors)), facts)],
    }
    typed = str.lower if lower else str
    print(f"{'setting':<18}{'threshold':>10}{'paraphrases':>13}{'unrelated':>11}{'near misses':>13}")
    for label, stores in settings.items():
        found, wrong, near = [], [], []  # the right example's score / the best score of a wrong retrieval
        for store, ids, subset in stores:
            for example_id, index in ids.items():
                for question in subset[index]["paraphrases"]:
                    hits = [e["score"] for e in ask(store, typed(question), k, 0.0) if e["id"] == example_id]
                    found.append(hits[0] if hits else 0.0)
            wrong += [max([e["score"] for e in ask(store, typed(q), k, 0.0)], default=0.0) for q in FACTS["unrelated"]]
            near += [max([e["score"] for e in ask(store, typed(q), k, 0.0)], default=0.0) for q in FACTS["near_misses"]]
        for t in thresholds:
            recall = sum(s >= t for s in found) / len(found)
            print(
                f"{label:<18}{t:>10.2f}{recall:>13.0%}{sum(s >= t for s in wrong) / len(wrong):>11.0%}"
                f"{sum(s >= t for s in near) / len(near):>13.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-score", type=float, default=fewshot.MIN_SCORE, help="relevance threshold")
    parser.add_argument("--k", type=int, default=3, help="examples retrieved per question")
    parser.add_argument("--distractors", type=int, default=1000, help="generated examples beside the facts")
    parser.add_argument("--scores", action="store_true", help="list every retrieval, not only the misses")
    parser.add_argument("--sweep", action="store_true", help="tabulate paraphrase recall and false retrievals by threshold")
    parser.add_argument("--lower", action="store_true", help="with --sweep: ask every question in lower case")
    args = parser.parse_args()
    facts = FACTS["facts"]
    if args.sweep:
        sweep(facts, args.k, args.distractors, args.lower)
        return
    print(f"min score {args.min_score}, k {args.k}")

    store, ids = build(facts)
    measure(f"{len(facts)} facts", store, ids, facts, args.k, args.min_score, args.scores)

    # Each fact alone: the score must behave with a single example.
    first = total = 0
    unrelated_hits = 0
    for index, fact in enumerate(facts):
        store, ids = build([fact])
        for question in fact["paraphrases"]:
            found = ask(store, question, args.k, args.min_score)
            total += 1
            first += bool(found)
        unrelated_hits += sum(bool(ask(store, q, args.k, args.min_score)) for q in FACTS["unrelated"])
    print("each fact alone (1 example)")
    print(f"  paraphrase retrieved: {first}/{total} ({first / total:.0%})")
    print(f"  unrelated questions retrieving anything: {unrelated_hits}/{len(facts) * len(FACTS['unrelated'])}")

    store, ids = build(facts, distractors(args.distractors))
    measure(f"{len(facts)} facts among {args.distractors} distractors", store, ids, facts, args.k, args.min_score, args.scores)


if __name__ == "__main__":
    main()
