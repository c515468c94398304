"""Measure what few-shot retrieval does to the bundled model's answers.

Stores the 24 fictional facts of tests/fewshot_facts.json as approved
examples (as if each had been corrected), then asks every question and
paraphrase with few-shot on, and the original questions with few-shot off,
and counts the answers that contain the fact. Greedy decoding, 48 new tokens.

    python -m benchmarks.measure_fewshot_answers [--data-dir .cache/test-data] [--limit 24]
"""

from __future__ import annotations

import argparse
import time

from benchmarks import fact_sets
from benchmarks.base_model import add_data_dir_flag

FACTS = fact_sets.fewshot_facts()["facts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_flag(parser)
    parser.add_argument("--limit", type=int, default=len(FACTS), help="how many facts to ask about")
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()

    from bot.serving.base import GenerationParams
    from bot.serving.engine import Engine
    from storage import Store
    from storage.search import MIN_SCORE

    engine = Engine.load(None, args.data_dir)
    store = Store(":memory:")
    facts = FACTS[: args.limit]
    ids = store.add_examples([{"input": f["question"], "output": f["answer"], "source": "correction"} for f in facts])
    params = GenerationParams(max_new_tokens=48)
    counts = {"same question, few-shot on": [0, 0], "paraphrase, few-shot on": [0, 0],
              "paraphrase retrieved, few-shot on": [0, 0], "same question, few-shot off": [0, 0]}
    started = time.perf_counter()

    def answer(question: str, few_shot: bool) -> tuple[str, list[int]]:
        messages = [{"role": "user", "content": question}]
        # The word score's 3 best, as demonstrations: what the model does with what it is shown.
        demos = store.search_examples(question, limit=3, min_score=MIN_SCORE) if few_shot else []
        generation = engine.generate(messages, params, demos)
        return generation.text, generation.few_shot_ids

    for example_id, fact in zip(ids, facts):
        asks = [("same question, few-shot on", fact["question"], True), ("same question, few-shot off", fact["question"], False)]
        asks += [("paraphrase, few-shot on", p, True) for p in fact["paraphrases"] + fact.get("held_out", [])]
        for label, question, few_shot in asks:
            text, used = answer(question, few_shot)
            right = fact["fact"].lower() in text.lower()
            counts[label][0] += right
            counts[label][1] += 1
            if label.startswith("paraphrase") and example_id in used:
                counts["paraphrase retrieved, few-shot on"][0] += right
                counts["paraphrase retrieved, few-shot on"][1] += 1
            if args.show:
                print(f"{'ok ' if right else 'no '} {label:<28} {question!r} -> {text[:120]!r}")
    print(f"{len(facts)} facts, {time.perf_counter() - started:.0f} s")
    for label, (right, total) in counts.items():
        print(f"  {label:<36} answer has the fact: {right}/{total} ({right / max(total, 1):.0%})")


if __name__ == "__main__":
    main()
