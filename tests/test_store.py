"""The store: migrations on a blank database, and reading back what was written."""

import json
import sqlite3

import pytest

from storage import ConflictError, NotFoundError, Store, ValidationError
from storage.examples import input_key, split_for
from storage.migrations import migrations


def test_migrations_create_every_table_on_a_blank_database(tmp_path):
    path = tmp_path / "blank.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert {"conversations", "messages", "feedback", "examples", "model_versions", "jobs", "example_history"} <= tables
    assert "examples_fts" in tables
    applied = [r[0] for r in conn.execute("select name from _sqlite_migrations order by rowid")]
    assert applied == [m.name for m in migrations._migrations]
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_reopening_applies_nothing_twice_and_keeps_data(tmp_path):
    path = tmp_path / "x.db"
    s = Store(path)
    example_id = s.add_example("Where is the office?", "On the 3rd floor.", source="admin")
    s.close()
    s2 = Store(path)
    assert s2.get_example(example_id)["output"] == "On the 3rd floor."
    s2.close()


def test_a_database_from_before_the_word_inactive_keeps_its_versions_activatable(tmp_path):
    path = tmp_path / "old.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("insert into model_versions (version, number, status) values ('v1', 1, 'retired')")
    conn.execute("delete from _sqlite_migrations where name = 'm008_inactive_versions'")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.get_model_version("v1")["status"] == "inactive"
    store.close()


def test_assistant_message_records_version_params_and_context(store):
    conv = store.create_conversation(source="ui", system_prompt="Be brief.")
    store.add_message(conv, "user", "Hi")
    context = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    mid = store.add_message(
        conv, "assistant", "Hello!", context=context, model_version="v2",
        gen_params={"max_new_tokens": 64, "temperature": 0.0}, few_shot_ids=[4, 7],
    )
    row = store.get_message(mid)
    assert row["context"] == context
    assert row["model_version"] == "v2"
    assert row["gen_params"] == {"max_new_tokens": 64, "temperature": 0.0}
    assert row["few_shot_ids"] == [4, 7]
    assert [m["role"] for m in store.conversation_messages(conv)] == ["user", "assistant"]


def test_feedback_reads_back_and_rejects_bad_ratings(store):
    conv = store.create_conversation()
    mid = store.add_message(conv, "assistant", "Lyon.", context=[{"role": "user", "content": "Capital of France?"}])
    fid = store.add_feedback(mid, rating="down", reason="wrong fact", comment="It's Paris")
    row = store.get_feedback(fid)
    assert (row["rating"], row["reason"], row["comment"]) == ("down", "wrong fact", "It's Paris")
    with pytest.raises(ValidationError):
        store.add_feedback(mid, rating="meh")
    with pytest.raises(NotFoundError):
        store.add_feedback(9999, rating="up")


def test_example_round_trip_with_rejected_original(store):
    eid = store.add_example(
        [{"role": "user", "content": "  Capital   of France? "}], "Paris.", source="correction",
        status="pending", rejected="Lyon.",
    )
    row = store.get_example(eid)
    assert row["input"] == [{"role": "user", "content": "Capital of France?"}]
    assert (row["output"], row["rejected"], row["source"], row["status"]) == ("Paris.", "Lyon.", "correction", "pending")
    assert row["split"] == split_for(input_key(row["input"]))


@pytest.mark.parametrize(
    "input, output, error",
    [
        ("", "x", "empty"),
        ([{"role": "robot", "content": "hi"}], "x", "role"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x", "end with a user"),
        ("hi", "   ", "empty"),
        ("hi", "x" * 20_001, "limit"),
    ],
)
def test_invalid_examples_are_refused_and_nothing_is_stored(store, input, output, error):
    with pytest.raises(ValidationError, match=error):
        store.add_example(input, output, source="admin")
    assert store.count_examples() == 0


def test_add_examples_is_all_or_nothing(store):
    rows = [dict(input="a?", output="A", source="import"), dict(input="b?", output="", source="import")]
    with pytest.raises(ValidationError):
        store.add_examples(rows)
    assert store.count_examples() == 0
    assert len(store.add_examples(rows[:1])) == 1


def test_newer_approved_output_supersedes_and_history_records_it(store):
    old = store.add_example("What are the hours?", "9 to 5.", source="admin")
    new = store.add_example("what are the  hours?", "8 to 6.", source="correction")
    assert store.get_example(old)["status"] == "superseded"
    assert store.get_example(old)["superseded_by"] == new
    store.update_example(new, status="rejected", actor="alice")
    store.update_example(new, output="8 to 7.", split="test", actor="bob")
    changes = [(h["field"], h["old_value"], h["new_value"], h["actor"]) for h in store.example_history(new)]
    assert ("status", "approved", "rejected", "alice") in changes
    assert ("output", "8 to 6.", "8 to 7.", "bob") in changes
    assert store.list_examples(status="rejected")[0]["output"] == "8 to 7."


def test_filters_and_search(store):
    store.add_example("How do I reset my password?", "Use the Forgot link.", source="correction")
    store.add_example("Where is the cafeteria?", "Ground floor.", source="upvote", status="pending")
    assert [e["source"] for e in store.list_examples(status="approved")] == ["correction"]
    assert store.count_examples(source="upvote") == 1
    with pytest.raises(ValidationError):
        store.list_examples(status="bogus")
    hits = store.search_examples("I forgot my password, how to reset it?")
    assert [h["output"] for h in hits] == ["Use the Forgot link."]
    assert store.search_examples("cafeteria") == []  # pending examples are not used


def test_one_job_at_a_time_and_versions(store):
    job = store.create_job("train", {"epochs": 1})
    with pytest.raises(ConflictError, match="already"):
        store.create_job("train")
    store.update_job(job, status="running", progress={"step": 1, "total": 4}, losses=[2.0, 1.5])
    assert store.get_job(job)["losses"] == [2.0, 1.5]
    store.update_job(job, status="succeeded")
    assert store.active_job() is None
    assert store.next_version_name() == "v1"
    store.add_model_version("v1", base_model="m", path="adapters/v1", metrics={"loss": 1.0})
    store.activate_version("v1")
    assert store.active_version()["version"] == "v1"
    assert store.next_version_name() == "v2"
    store.activate_version(None)
    assert store.active_version() is None
    assert store.get_model_version("v1")["status"] == "inactive"


def test_trimming_an_examples_input_keeps_its_last_turns_and_the_history(store):
    chat = [{"role": "system", "content": "Be brief."}]
    for i in range(3):
        chat += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    chat = chat[:-1]  # ends with the user's third question
    older = store.add_example("Question 2?", "Old answer.", source="admin")
    example_id = store.add_example(chat, "Right answer.", source="correction", actor="ui")
    kept = store.update_example(example_id, keep_turns=2, actor="admin")["input"]
    assert [m["content"] for m in kept] == ["Be brief.", "Question 1?", "Answer 1.", "Question 2?"]
    one = store.update_example(example_id, keep_turns=1, actor="admin")
    assert one["input"] == [chat[0], chat[-1]] and one["input_text"] == "Question 2?"
    assert store.update_example(example_id, keep_turns=5, actor="admin")["input"] == one["input"]  # nothing left to trim
    inputs = [h for h in store.example_history(example_id) if h["field"] == "input"]
    assert len(inputs) == 2 and json.loads(inputs[0]["old_value"]) == chat
    # Without the system prompt it asks what `older` asks: the newest approved output wins.
    plain = store.update_example(example_id, input="Question 2?", actor="admin")
    assert plain["split"] == store.get_example(older)["split"]  # equal inputs never straddle splits
    assert store.get_example(older)["status"] == "superseded"
    for bad in (0, -1, "1", 1.5, True):
        with pytest.raises(ValidationError):
            store.update_example(example_id, keep_turns=bad)
