"""Which way of sharing SQLite between request threads writes faster?

A. one connection guarded by a lock, each write one transaction under it (what Store does);
B. one connection per thread, `BEGIN IMMEDIATE` and a busy timeout (SQLite serialises writers).

Each thread repeats the transaction a correction makes (a feedback row, an example with
its full-text entry, a history row, the feedback pointed at the example) on a WAL
database with synchronous=FULL. Prints writes/s and latency for both, and B/A.

    python -m benchmarks.bench_store_writes --threads 16 --seconds 5
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.timing import percentile, run_at_once

SCHEMA = """
create table feedback (id integer primary key, message_id int, correction text, example_id int, created_at text);
create table examples (id integer primary key, input_text text, output text, status text, feedback_id int);
create index examples_status on examples(status);
create table history (id integer primary key, example_id int, field text, new_value text);
create virtual table examples_fts using fts5(input_text, content='examples', content_rowid='id');
create trigger examples_ai after insert on examples begin
  insert into examples_fts (rowid, input_text) values (new.id, new.input_text); end;
"""


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("pragma journal_mode = wal")
    conn.execute("pragma synchronous = full")
    conn.execute("pragma busy_timeout = 30000")
    return conn


def correction(conn: sqlite3.Connection, writer: int, n: int) -> None:
    conn.execute("begin immediate")
    try:
        feedback = conn.execute(
            "insert into feedback (message_id, correction, created_at) values (?, ?, datetime())",
            [writer, f"writer {writer} text {n}"],
        ).lastrowid
        example = conn.execute(
            "insert into examples (input_text, output, status, feedback_id) values (?, ?, 'approved', ?)",
            [f"question of writer {writer} number {n}", f"writer {writer} text {n}", feedback],
        ).lastrowid
        conn.execute("insert into history (example_id, field, new_value) values (?, 'created', 'approved')", [example])
        conn.execute("update feedback set example_id = ? where id = ?", [example, feedback])
        conn.execute("commit")
    except BaseException:
        conn.execute("rollback")
        raise


def run(threads: int, seconds: float, make_writer: Callable[[Path], Callable[[int, int], None]]) -> tuple[int, list[float]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        setup = connect(path)
        setup.executescript(SCHEMA)
        setup.close()
        write = make_writer(path)
        latencies: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def worker(w: int) -> None:
            n, mine = 0, []
            while time.monotonic() < deadline:
                began = time.monotonic()
                write(w, n)
                mine.append(time.monotonic() - began)
                n += 1
            with lock:
                latencies.extend(mine)

        run_at_once(worker, threads)
        return len(latencies), latencies


def shared_connection(path: Path) -> Callable[[int, int], None]:
    conn, lock = connect(path), threading.Lock()

    def write(w: int, n: int) -> None:
        with lock:
            correction(conn, w, n)

    return write


def connection_per_thread(path: Path) -> Callable[[int, int], None]:
    local = threading.local()

    def write(w: int, n: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = connect(path)
        correction(local.conn, w, n)

    return write


def describe(label: str, count: int, latencies: list[float], seconds: float) -> str:
    return (f"{label}: {count / seconds:.0f} writes/s, p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    a = run(args.threads, args.seconds, shared_connection)
    b = run(args.threads, args.seconds, connection_per_thread)
    print(describe("A one connection + lock      ", *a, args.seconds))
    print(describe("B connection per thread      ", *b, args.seconds))
    print(f"throughput B/A: {b[0] / a[0]:.2f}x")


if __name__ == "__main__":
    main()
