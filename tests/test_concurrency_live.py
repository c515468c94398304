"""Many people at once against a real `launch.py serve` on 127.0.0.1 (loopback policy:
corrections are approved at once): concurrent writers, a SIGKILL in the middle,
and writers beside streaming chats. Every acknowledged write must be in the
database with its own text. The figures are printed (pytest -s or -rP shows them)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from benchmarks.load_client import (
    LoadResult,
    create_answers,
    integrity_check,
    missing_writes,
    run_streaming_chats,
    run_writers,
    seed_answers,
)
from benchmarks.timing import percentile

WRITERS = 50
# Hundreds of new corrections would start an automatic training run; this test is about the writes.
NO_RETRAIN = ("--no-retrain-enabled",)
ASKED = 4  # answers made by the real model through the API; the rest are seeded in setup


def start_with_answers(live_server_factory, data_dir):
    """A server on `data_dir` and one answer per writer: most stored before it starts, a few asked."""
    seeded = seed_answers(data_dir / "exemplar.db", WRITERS - ASKED)
    server = live_server_factory(*NO_RETRAIN, data_dir=data_dir)
    return server, seeded + create_answers(server.url, ASKED)


def test_fifty_writers_get_no_5xx_and_every_write_is_their_own(live_server_factory, tmp_path):
    server, messages = start_with_answers(live_server_factory, tmp_path / "data")
    result = run_writers(server.url, messages, seconds=20)
    print("\n" + result.summary(f"{WRITERS} writers, 20 s"))
    assert result.server_errors == 0, result.failures[:5]
    assert result.failures == []
    assert len(result.acknowledged) > WRITERS  # every writer got through, more than once
    assert missing_writes(server.data_dir / "exemplar.db", result.acknowledged) == []


def test_sigkill_loses_no_acknowledged_write(live_server_factory, tmp_path):
    data_dir = tmp_path / "killed"
    server, messages = start_with_answers(live_server_factory, data_dir)
    stop = threading.Event()
    result = LoadResult()

    def kill_when_busy() -> None:
        # Mid-run: once the writers have had 100 writes acknowledged (or after 15 s on a slow machine).
        deadline = time.monotonic() + 15
        while len(result.acknowledged) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGKILL)
        stop.set()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    run_writers(server.url, messages, seconds=30, stop=stop, result=result)
    killer.join()
    server.process.wait(timeout=10)
    print("\n" + result.summary(f"{WRITERS} writers, SIGKILL mid-run"))
    assert server.process.returncode == -signal.SIGKILL
    assert result.server_errors == 0
    assert len(result.acknowledged) >= 20  # the kill came in the middle of the writing

    restarted = live_server_factory(*NO_RETRAIN, data_dir=data_dir)  # the same data dir, as after a crash
    db = data_dir / "exemplar.db"
    assert integrity_check(db) == "ok"
    assert missing_writes(db, result.acknowledged) == []
    # And the restarted server takes writes again.
    after = run_writers(restarted.url, messages[:5], seconds=2)
    assert after.server_errors == 0 and after.acknowledged
    assert missing_writes(db, result.acknowledged + after.acknowledged) == []


@pytest.mark.slow
def test_streaming_chats_and_writers_together_lose_nothing(live_server_factory, tmp_path):
    server, messages = start_with_answers(live_server_factory, tmp_path / "data")
    chats: dict = {}
    chat_thread = threading.Thread(target=lambda: chats.update(stats=run_streaming_chats(server.url, 8, 60)))
    chat_thread.start()
    result = run_writers(server.url, messages, seconds=60)
    chat_thread.join()
    stats = chats["stats"]
    print("\n" + result.summary(f"{WRITERS} writers beside 8 streaming chats, 60 s"))
    print(f"8 streaming chats: {stats.completed} answers, first token p50 "
          f"{percentile(stats.first_token, 0.5) * 1000:.0f} ms, p95 {percentile(stats.first_token, 0.95) * 1000:.0f} ms, "
          f"errors {len(stats.errors)}")
    assert stats.errors == [] and stats.completed >= 8
    assert result.server_errors == 0 and result.failures == []
    assert missing_writes(server.data_dir / "exemplar.db", result.acknowledged) == []
