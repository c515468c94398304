"""Store transactions: a feedback and its example are written together or not at all,
concurrent writers on one Store never mix up rows, and history names the real actor."""

import sqlite3
import threading

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
