"""Store transactions: a feedback and its example are written together or not at all,
concurrent writers on one Store never mix up rows, and history names the real actor."""

import sqlite3
import threading
from pathlib import Path

import pytest

from storage import Store, ValidationError
from storage.vocabulary import Actor

QUESTION = [{"role": "user", "content": "Capital of France?"}]


def answer(store: Store, text: str = "Lyon.", question: list | None = None) -> int:
    conv = store.create_conversation(source="api")
    store.add_message(conv, "user", (question or QUESTION)[-1]["content"])
    return store.add_message(conv, "assistant", text, context=question or QUESTION)


def test_a_correction_stores_feedback_and_example_together(store):
    mid = answer(store)
    result = store.record_feedback(mid, correction="Paris.", status="approved", actor=Actor.API)
    example = store.get_example(result["example_id"])
    feedback = store.get_feedback(result["feedback_id"])
    assert (example["output"], example["rejected"], example["feedback_id"]) == ("Paris.", "Lyon.", feedback["id"])
    assert (feedback["correction"], feedback["example_id"], feedback["actor"]) == ("Paris.", example["id"], "api")


def test_a_failure_halfway_stores_nothing(store, monkeypatch):
    mid = answer(store)

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "add_example", broken)  # fails after the feedback row is written
    with pytest.raises(sqlite3.OperationalError):
        store.record_feedback(mid, correction="Paris.", status="approved", actor=Actor.API)
    assert store.message_feedback(mid) == []
    monkeypatch.undo()
    result = store.record_feedback(mid, correction="Paris.", status="approved", actor=Actor.API)
    assert [f["id"] for f in store.message_feedback(mid)] == [result["feedback_id"]]


def test_refused_feedback_stores_nothing(store):
    mid = answer(store)
    for bad in ({"correction": "Lyon."}, {"correction": ""}, {"rating": "meh"}):
        with pytest.raises(ValidationError):
            store.record_feedback(mid, status="approved", actor=Actor.API, **bad)
    with pytest.raises(ValidationError):
        store.record_feedback(mid, rating="up", status="approved", actor="someone")
    assert store.message_feedback(mid) == [] and store.count_examples() == 0


def test_anonymous_unrating_cannot_undo_an_admin_approval(store):
    mid = answer(store, "Paris.")
    upvote = store.record_feedback(mid, rating="up", status="pending", actor=Actor.UI)
    store.update_example(upvote["example_id"], status="approved", actor=Actor.ADMIN)
    for rating in (None, "down"):
        store.record_feedback(mid, rating=rating, status="pending", actor=Actor.API)
    assert store.get_example(upvote["example_id"])["status"] == "approved"
    assert [f["rating"] for f in store.message_feedback(mid)] == ["up", None, "down"]  # the feedback is kept
    history = [(h["field"], h["new_value"], h["actor"]) for h in store.example_history(upvote["example_id"])]
    assert history == [("created", "pending", "ui"), ("status", "approved", "admin")]


def test_anonymous_unrating_withdraws_an_upvote_nobody_reviewed(store):
    mid = answer(store, "Paris.")
    upvote = store.record_feedback(mid, rating="up", status="approved", actor=Actor.UI)
    store.record_feedback(mid, rating=None, status="approved", actor=Actor.UI)
    assert store.get_example(upvote["example_id"])["status"] == "rejected"
    history = [(h["field"], h["new_value"], h["actor"]) for h in store.example_history(upvote["example_id"])]
    assert history == [("created", "approved", "ui"), ("status", "rejected", "ui")]


def test_a_newer_approved_output_supersedes_as_the_policy(store):
    first = store.add_example("Capital of France?", "Lyon.", source="admin", actor=Actor.ADMIN)
    store.record_feedback(answer(store), correction="Paris.", status="approved", actor=Actor.API)
    history = [(h["field"], h["new_value"], h["actor"]) for h in store.example_history(first)]
    assert history[-1] == ("status", "superseded", "policy")


def test_concurrent_writers_on_one_store_get_their_own_rows(tmp_path):
    store = Store(tmp_path / "exemplar.db")
    writers, per_writer = 16, 15
    messages = [answer(store, f"Answer {w}.", [{"role": "user", "content": f"Question {w}?"}]) for w in range(writers)]
    acknowledged: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(w: int) -> None:
        start.wait()
        for i in range(per_writer):
            text = f"Writer {w} correction {i}."
            try:
                if i % 5 == 4:  # mixed in: ratings, which withdraw and re-add upvote examples
                    store.record_feedback(messages[w], rating="down", status="approved", actor=Actor.API)
                result = store.record_feedback(messages[w], correction=text, status="approved", actor=Actor.API)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
            else:
                acknowledged.append((result["feedback_id"], result["example_id"], text))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(acknowledged) == writers * per_writer
    store.close()
    reopened = Store(tmp_path / "exemplar.db")
    for feedback_id, example_id, text in acknowledged:
        assert reopened.get_feedback(feedback_id)["correction"] == text
        example = reopened.get_example(example_id)
        assert (example["output"], example["feedback_id"]) == (text, feedback_id)
    assert reopened.integrity_check() == "ok"
    reopened.close()


def imported(n: int, status: str = "approved", offset: int = 0) -> list[dict]:
    return [dict(input=f"Imported question {i % 7}?", output=f"Imported answer {i + offset}.", source="import",
                 status=status) for i in range(n)]


def test_a_chunked_import_ends_as_one_at_a_time_would(tmp_path):
    one_by_one, chunked = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    for store in (one_by_one, chunked):
        store.add_example("Imported question 3?", "An older answer.", source="admin", actor=Actor.ADMIN)
    expected = [one_by_one.add_example(**row, actor=Actor.ADMIN) for row in imported(20)]
    ids = chunked.add_examples(imported(20), actor=Actor.ADMIN, chunk_rows=3)
    assert ids == expected
    for store in (one_by_one, chunked):
        assert store.count_examples(status="approved") == 7  # the newest output of each of the 7 questions
        assert store.count_examples(status="superseded") == 14
    for example_id in [1, *ids]:
        a, b = one_by_one.get_example(example_id), chunked.get_example(example_id)
        assert (a["status"], a["output"], a["superseded_by"]) == (b["status"], b["output"], b["superseded_by"])
        keep = ("field", "old_value", "new_value", "actor")
        assert [[h[k] for k in keep] for h in one_by_one.example_history(example_id)] == [
            [h[k] for k in keep] for h in chunked.example_history(example_id)]
    assert chunked.search_examples("Imported question 3?")[0]["output"] == "Imported answer 17."


def test_an_import_is_invisible_until_it_is_all_in_and_gone_if_it_fails(store, monkeypatch):
    seen = []
    publish = store._publish_import

    def look_then_fail(*args):
        seen.append((store.count_examples(), store.list_examples(), store.search_examples("Imported question 1?")))
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(store, "_publish_import", look_then_fail)
    with pytest.raises(sqlite3.OperationalError):
        store.add_examples(imported(10), chunk_rows=4)
    assert seen == [(0, [], [])]  # all 10 rows were written, in 3 chunks, and none was visible
    assert store.count_examples() == 0 and store.integrity_check() == "ok"
    monkeypatch.setattr(store, "_publish_import", publish)
    assert len(store.add_examples(imported(10), chunk_rows=4)) == store.count_examples() == 10


def test_a_bad_row_anywhere_stores_nothing(store):
    rows = imported(1200)
    rows[1100]["output"] = ""
    with pytest.raises(ValidationError):
        store.add_examples(rows)
    assert store.count_examples() == 0


def test_the_rows_of_an_import_whose_process_died_are_dropped(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "exemplar.db"
    Store(path).close()
    # A process that dies between two chunks of its import.
    script = (
        "import os, sys; from storage import Store; s = Store(sys.argv[1]); "
        "s._publish_import = lambda *a: os._exit(9); "
        "s.add_examples([dict(input=f'q{i}?', output='a.', source='import') for i in range(30)], chunk_rows=7)"
    )
    dead = subprocess.run([sys.executable, "-c", script, str(path)], cwd=Path(__file__).resolve().parent.parent)
    assert dead.returncode == 9
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from examples").fetchone()[0] == 30  # hidden, not yet dropped
    conn.close()
    reopened = Store(path)
    assert reopened.count_examples() == 0
    assert reopened.list_examples(limit=None) == []
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from examples").fetchone()[0] == 0
    assert conn.execute("select count(*) from import_rows").fetchone()[0] == 0
    conn.close()
    reopened.close()
