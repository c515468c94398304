"""Clients that load a real server over HTTP, for bench_feedback_load and the concurrency
tests: writers posting corrections to /api/feedback and streaming chats, each recording what
the server acknowledged and how fast, and checks of the database afterwards."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.timing import percentile, run_at_once


def create_answers(url: str, count: int, *, workers: int = 4, max_tokens: int = 1) -> list[int]:
    """Ask `count` distinct questions (cheaply: `max_tokens` tokens each); return the answers' message ids."""
    ids: list[int | None] = [None] * count
    next_index = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                body = {"messages": [{"role": "user", "content": f"Load question number {i}?"}],
                        "max_tokens": max_tokens, "few_shot": False}
                response = client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                ids[i] = int(response.json()["id"])

    run_at_once(lambda _: work(), min(workers, count))
    assert None not in ids
    return ids  # type: ignore[return-value]


def seed_answers(db_path: Path, count: int) -> list[int]:
    """Setup only, before the server starts: `count` stored answers to distinct questions, as if
    chatted earlier (asking the real model for each costs seconds on a shared CPU; the tests
    also create some through the API). Returns the answers' message ids."""
    from storage import Store

    store = Store(db_path)
    try:
        ids = []
        for i in range(count):
            question = [{"role": "user", "content": f"Earlier question number {i}?"}]
            conversation = store.create_conversation(source="api")
            store.add_message(conversation, "user", question[0]["content"])
            ids.append(store.add_message(conversation, "assistant", f"Earlier answer {i}.", context=question))
        return ids
    finally:
        store.close()


@dataclass
class LoadResult:
    """What the writers sent and what the server answered."""

    acknowledged: list[tuple[int, int, str]] = field(default_factory=list)  # (feedback_id, example_id, text)
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    failures: list[str] = field(default_factory=list)  # connection errors and unexpected answers
    latencies: list[float] = field(default_factory=list)  # seconds, of acknowledged writes
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)

    def summary(self, label: str) -> str:
        p50, p95 = percentile(self.latencies, 0.5), percentile(self.latencies, 0.95)
        return (f"{label}: {len(self.acknowledged)} writes acknowledged in {self.seconds:.1f} s "
                f"({len(self.acknowledged) / max(self.seconds, 1e-9):.1f}/s), statuses {dict(sorted(self.statuses.items()))}, "
                f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, failures {len(self.failures)}")


def run_writers(
    url: str,
    message_ids: list[int],
    seconds: float,
    *,
    stop: threading.Event | None = None,
    result: LoadResult | None = None,
) -> LoadResult:
    """One writer per message id, each posting corrections with unique text to its own message
    for `seconds` (or until `stop` is set), filling `result` as answers come. Connection errors
    count as failures."""
    result = result if result is not None else LoadResult()
    lock = threading.Lock()
    stop = stop or threading.Event()
    deadline = time.monotonic() + seconds

    def writer(w: int, message_id: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while time.monotonic() < deadline and not stop.is_set():
                text = f"Writer {w} correction {i} of message {message_id}."
                i += 1
                began = time.monotonic()
                try:
                    response = client.post("/api/feedback", json={"message_id": message_id, "correction": text})
                except httpx.HTTPError as exc:
                    with lock:
                        result.failures.append(f"writer {w}: {type(exc).__name__}: {exc}")
                    if stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                took = time.monotonic() - began
                with lock:
                    result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                    if response.status_code == 201:
                        body = response.json()
                        result.acknowledged.append((body["feedback_id"], body["example_id"], text))
                        result.latencies.append(took)
                    else:
                        result.failures.append(f"writer {w}: {response.status_code} {response.text[:200]}")

    _, result.seconds = run_at_once(lambda w: writer(w, message_ids[w]), len(message_ids))
    return result


def missing_writes(db_path: Path, acknowledged: list[tuple[int, int, str]]) -> list[str]:
    """The acknowledged writes not in the database exactly as acknowledged (empty when all are)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        feedback = dict(conn.execute("select id, correction from feedback where correction is not null").fetchall())
        examples = {row[0]: row[1:] for row in conn.execute("select id, output, feedback_id from examples")}
    finally:
        conn.close()
    problems = []
    for feedback_id, example_id, text in acknowledged:
        if feedback.get(feedback_id) != text:
            problems.append(f"feedback {feedback_id}: {feedback.get(feedback_id)!r} != {text!r}")
        if examples.get(example_id) != (text, feedback_id):
            problems.append(f"example {example_id}: {examples.get(example_id)!r} != {(text, feedback_id)!r}")
    return problems


def integrity_check(db_path: Path) -> str:
    """SQLite's own check of the database file: "ok" when it is sound."""
    conn = sqlite3.connect(db_path)
    try:
        return "\n".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())
    finally:
        conn.close()


@dataclass
class ChatStats:
    """What the streaming chats got: times to first token, answers completed, errors."""

    first_token: list[float] = field(default_factory=list)
    completed: int = 0
    errors: list[str] = field(default_factory=list)


def run_streaming_chats(url: str, chats: int, seconds: float, *, max_tokens: int = 16) -> ChatStats:
    """`chats` clients asking streamed questions back to back for `seconds`; records time to first token."""
    stats = ChatStats()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def chat(c: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            n = 0
            while time.monotonic() < deadline:
                body = {"messages": [{"role": "user", "content": f"Chat {c} question {n}: name a colour."}],
                        "max_tokens": max_tokens, "stream": True, "few_shot": True}
                n += 1
                began = time.monotonic()
                first = None
                try:
                    with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        if response.status_code != 200:
                            response.read()
                            raise RuntimeError(f"{response.status_code} {response.text[:200]}")
                        done = False
                        for line in response.iter_lines():
                            if not line.startswith("data: "):
                                continue
                            data = line[len("data: "):]
                            if data == "[DONE]":
                                done = True
                                break
                            event = json.loads(data)
                            if "error" in event:
                                raise RuntimeError(f"stream error {event['error']}")
                            if first is None and event["choices"][0]["delta"].get("content"):
                                first = time.monotonic() - began
                        if not done:
                            raise RuntimeError("stream ended without [DONE]")
                except Exception as exc:  # noqa: BLE001 - every failure is reported by the test
                    with lock:
                        stats.errors.append(f"chat {c}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    stats.completed += 1
                    if first is not None:
                        stats.first_token.append(first)

    run_at_once(chat, chats)
    return stats

