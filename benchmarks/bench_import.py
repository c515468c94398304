"""How long chat waits for the database during a large import.

One thread imports N examples through Store.add_examples while another does what
a chat turn does to the store (start a conversation, store the question, look up
few-shot examples, store the answer) in a loop. Run twice in one process: the
import as one transaction (chunk_rows=N, how imports used to hold the lock) and in
chunks (the default). Prints the chat step's latency in each and their ratio.

    python -m benchmarks.bench_import --rows 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.timing import percentile
from storage import Store
from storage.formats import parse_examples


def rows_for(n: int) -> list[dict]:
    data = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"Imported question {i} about topic {i % 997}?"},
                                 {"role": "assistant", "content": f"Imported answer {i}."}]})
        for i in range(n)
    )
    return parse_examples(data.encode(), None)


def chat_steps(store: Store, stop: threading.Event, latencies: list[float]) -> None:
    n = 0
    while not stop.is_set():
        began = time.monotonic()
        conversation = store.create_conversation(source="api")
        question = f"What about topic {n % 997}?"
        store.add_message(conversation, "user", question)
        store.search_examples(question)
        store.add_message(conversation, "assistant", "An answer.", context=[{"role": "user", "content": question}])
        latencies.append(time.monotonic() - began)
        n += 1
        time.sleep(0.01)


def run(rows: list[dict], chunk_rows: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "exemplar.db")
        store.add_examples(rows_for(200))  # something to search from the start
        stop, latencies = threading.Event(), []
        chat = threading.Thread(target=chat_steps, args=(store, stop, latencies))
        chat.start()
        time.sleep(0.5)
        began = time.monotonic()
        store.add_examples(rows, chunk_rows=chunk_rows)
        took = time.monotonic() - began
        stop.set()
        chat.join()
        store.close()
    return took, latencies


def describe(label: str, took: float, latencies: list[float]) -> str:
    return (f"{label}: import {took:.1f} s; chat step during it: {len(latencies)} steps, "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="examples to import")
    args = parser.parse_args()
    rows = rows_for(args.rows)
    whole = run(rows, chunk_rows=args.rows)
    chunked = run(rows, chunk_rows=500)
    print(describe("one transaction", *whole))
    print(describe("chunks of 500  ", *chunked))
    print(f"worst chat wait, one transaction / chunked: {max(whole[1]) / max(chunked[1]):.1f}x; "
          f"import time, chunked / one transaction: {chunked[0] / whole[0]:.2f}x")


if __name__ == "__main__":
    main()
