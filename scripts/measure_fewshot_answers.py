"""Measure what few-shot retrieval does to the bundled model's answers.

Stores the 24 fictional facts of tests/fewshot_facts.json as approved
examples (as if each had been corrected), then asks every question and
paraphrase with few-shot on, and the original questions with few-shot off,
and counts the answers that contain the fact. Greedy decoding, 48 new tokens.

    .venv/bin/python scripts/measure_fewshot_answers.py [--data-dir .cache/test-data] [--limit 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.serving.base import GenerationParams  # noqa: E402
from bot.serving.engine import Engine  # noqa: E402
from bot.serving.retrieval import retrieve  # noqa: E402
from storage import Store  # noqa: E402

FACTS = json.loads((REPO / "tests" / "fewshot_facts.json").read_text())["facts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / ".cache" / "test-data", help="holds the converted model")
    parser.add_argument("--limit", type=int, default=len(FACTS), help="how many facts to ask about")
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()

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
        demos = retrieve(store, messages) if few_shot else []
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
