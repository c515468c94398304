"""The review queue's handlers, driven directly: the password check, filters,
side-by-side details, bulk changes with history, adding, import and export."""

from __future__ import annotations

import inspect
import json
import zipfile
from datetime import date, timedelta
from pathlib import Path

import gradio as gr
import pytest

from bot.ui.admin_review import ReviewHandlers, build_review_section, parse_ids
from core.errors import ValidationError

PASSWORD = "right-password"
FILTERS = ("pending", "any", "any", "", "")  # status, source, split, since, until


def check_admin(password):
    if password != PASSWORD:
        raise gr.Error("The admin password is wrong")


@pytest.fixture
def handlers(store):
    return ReviewHandlers(store, check_admin, actor_fn=lambda request: "alice")


@pytest.fixture
def queue(store):
    """Two pending corrections, one approved admin example, one pending upvote in the test split."""
    ids = [
        store.add_example("What is the capital of Zorvania?", "Velmora.", source="correction", status="pending",
                          rejected="Paris.", split="train"),
        store.add_example("Who founded the Quillon Institute?", "Maren Astley.", source="correction", status="pending",
                          rejected="Albert Einstein.", split="train"),
        store.add_example("How tall is Mount Terevant?", "4,312 metres.", source="admin", split="train"),
        store.add_example("What is Tidepool?", "A calendar app.", source="upvote", status="pending", split="test"),
    ]
    return ids


def test_every_handler_checks_the_password_before_anything(handlers, store, queue):
    calls = {
        "table": FILTERS,
        "pick": (None, gr.SelectData(None, {"index": [0, 0], "value": 1, "row_value": [1]})),
        "pick_all": (None,),
        "details": ("1",),
        "approve": ("1",),
        "reject": ("1",),
        "to_pending": ("3",),
        "to_train": ("4",),
        "to_test": ("1",),
        "save_output": ("1", "Hacked."),
        "trim_context": ("1", 1),
        "save_input": ("1", "\"Hacked?\""),
        "add": ("Q?", "A.", "auto"),
        "import_upload": ("/etc/passwd", "jsonl", "approved"),
        "export": ("jsonl", "all"),
    }
    public = {name for name, _ in inspect.getmembers(ReviewHandlers, inspect.isfunction) if not name.startswith("_")}
    assert public == set(calls), "a new handler needs a line here"
    before = [(e["status"], e["split"], e["output"]) for e in store.list_examples(limit=None)]
    for name, args in calls.items():
        for wrong in ("", "wrong", None):
            with pytest.raises(gr.Error, match="password"):
                getattr(handlers, name)(wrong, *args)
    assert [(e["status"], e["split"], e["output"]) for e in store.list_examples(limit=None)] == before
    assert store.count_examples() == 4


def test_every_event_of_the_section_is_a_checked_handler(store):
    with gr.Blocks() as demo:
        password = gr.Textbox()
        handlers = build_review_section(store, check_admin, password)
    functions = [block_fn.fn for block_fn in demo.fns.values() if block_fn.fn is not None]
    assert len(functions) >= 12
    assert all(getattr(fn, "__self__", None) is handlers for fn in functions)
    assert all(block_fn.api_visibility == "private" for block_fn in demo.fns.values())
    # No component loads data through a value function (that would be a public endpoint).
    assert not any(callable(getattr(block, "value", None)) for block in demo.blocks.values())


def test_the_table_filters_by_status_source_split_and_date(handlers, queue):
    frame, count = handlers.table(PASSWORD, *FILTERS)
    assert list(frame["id"]) == [queue[3], queue[1], queue[0]] and count == "3 examples"
    assert list(frame.columns)[:4] == ["id", "status", "source", "split"]
    assert frame.loc[frame["id"] == queue[0], "original answer"].item() == "Paris."
    assert list(handlers.table(PASSWORD, "pending", "correction", "any", "", "")[0]["id"]) == [queue[1], queue[0]]
    assert list(handlers.table(PASSWORD, "any", "any", "test", "", "")[0]["id"]) == [queue[3]]
    today, yesterday = date.today().isoformat(), (date.today() - timedelta(days=1)).isoformat()
    assert len(handlers.table(PASSWORD, "any", "any", "any", today, today)[0]) == 4  # 'to' includes its day
    assert handlers.table(PASSWORD, "any", "any", "any", "", yesterday)[1] == "0 examples"
    with pytest.raises(gr.Error, match="YYYY-MM-DD"):
        handlers.table(PASSWORD, "any", "any", "any", "last week", "")


def test_picking_rows_and_the_side_by_side_details(handlers, store, queue):
    frame, _ = handlers.table(PASSWORD, *FILTERS)
    event = gr.SelectData(None, {"index": [2, 4], "value": "x", "row_value": frame.iloc[2].tolist()})
    assert handlers.pick(PASSWORD, frame, event) == str(queue[0])
    assert handlers.pick_all(PASSWORD, frame) == f"{queue[3]}, {queue[1]}, {queue[0]}"
    body, original, output, history, _ = handlers.details(PASSWORD, str(queue[0]))
    assert "What is the capital of Zorvania?" in body and "pending" in body
    assert (original, output) == ("Paris.", "Velmora.")
    assert list(history["field"]) == ["created"]
    with pytest.raises(gr.Error, match="does not exist"):
        handlers.details(PASSWORD, "999")


def test_the_details_show_an_examples_text_as_stored_not_rendered(handlers, store):
    """LaTeX and Markdown in an example are what the model will learn: the admin sees the characters."""
    import html
    import re

    question = "Square it: $x^2$, then \\frac{a}{b}.\n\n**bold** _it_ `code` <b>tag</b> & [link](http://x)\n- item"
    example_id = store.add_example(question, "$$E = mc^2$$", source="admin")
    body, _, output, *_ = handlers.details(PASSWORD, str(example_id))
    assert "<b>tag</b>" not in body and "&lt;b&gt;tag&lt;/b&gt;" in body  # escaped, not markup
    assert question in html.unescape(re.sub(r"<[^>]+>", "", body))  # every character, line breaks too
    assert output == "$$E = mc^2$$"  # in a Textbox
    with gr.Blocks():
        section = build_review_section(store, check_admin, gr.Textbox())
    shown = section.detail_outputs[0]
    # gr.HTML renders neither Markdown nor LaTeX (gr.Markdown does both).
    assert isinstance(shown, gr.HTML) and shown.elem_id == "review-details"


def test_parse_ids():
    assert parse_ids("3, 5 7-9,#12, 3") == [3, 5, 7, 8, 9, 12]
    for bad in ("", "abc", "9-3", "1-5000"):
        with pytest.raises(ValidationError):
            parse_ids(bad)


def test_bulk_approve_records_who_and_when_and_is_all_or_nothing(handlers, store, queue):
    with pytest.raises(gr.Error, match="999 does not exist"):
        handlers.approve(PASSWORD, f"{queue[0]}, 999")
    assert store.get_example(queue[0])["status"] == "pending"  # nothing changed

    message = handlers.approve(PASSWORD, f"{queue[0]}-{queue[1]}")
    assert message.startswith("Approved 2 examples")
    for example_id in queue[:2]:
        assert store.get_example(example_id)["status"] == "approved"
        last = store.example_history(example_id)[-1]
        assert (last["field"], last["old_value"], last["new_value"], last["actor"]) == ("status", "pending", "approved", "alice")
        assert last["at"]
    handlers.reject(PASSWORD, str(queue[3]))
    assert store.get_example(queue[3])["status"] == "rejected"
    handlers.to_pending(PASSWORD, str(queue[3]))
    assert store.get_example(queue[3])["status"] == "pending"


def test_edit_one_output_and_move_between_splits(handlers, store, queue):
    handlers.save_output(PASSWORD, str(queue[0]), "  The capital of Zorvania is   Velmora. ")
    assert store.get_example(queue[0])["output"] == "The capital of Zorvania is Velmora."
    change = store.example_history(queue[0])[-1]
    assert (change["field"], change["old_value"], change["actor"]) == ("output", "Velmora.", "alice")
    with pytest.raises(gr.Error, match="one example at a time"):
        handlers.save_output(PASSWORD, f"{queue[0]}, {queue[1]}", "x")
    with pytest.raises(gr.Error, match="empty"):
        handlers.save_output(PASSWORD, str(queue[0]), "   ")
    handlers.to_test(PASSWORD, f"{queue[0]} {queue[1]}")
    assert [store.get_example(i)["split"] for i in queue[:2]] == ["test", "test"]
    handlers.to_train(PASSWORD, str(queue[1]))
    assert store.get_example(queue[1])["split"] == "train"


def test_add_an_example_by_hand(handlers, store):
    message, question, answer = handlers.add(PASSWORD, "Does Tidepool have a dark mode?", "Yes: Settings > Appearance.", "test")
    assert message.startswith("Added example #1 (approved, test split)") and (question, answer) == ("", "")
    example = store.get_example(1)
    assert (example["source"], example["status"], example["split"]) == ("admin", "approved", "test")
    assert store.example_history(1)[0]["actor"] == "alice"
    with pytest.raises(gr.Error, match="empty"):
        handlers.add(PASSWORD, "A question?", "", "auto")


def test_import_an_uploaded_file_all_or_nothing(handlers, store, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # where Gradio puts uploads
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}) + "\n" for i in range(3)))
    assert handlers.import_upload(PASSWORD, str(good), "guess from the file", "pending").startswith("Imported 3 examples")
    assert store.count_examples(status="pending", source="import") == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Q?", "output": "A."}) + "\n" + '{"instruction": "Q?"}\n')
    with pytest.raises(gr.Error, match="Nothing was imported. line 2"):
        handlers.import_upload(PASSWORD, str(bad), "alpaca", "as the file says")
    assert store.count_examples() == 3
    with pytest.raises(gr.Error, match="Choose a file"):
        handlers.import_upload(PASSWORD, None, "jsonl", "approved")


def test_export_to_download(handlers, store, queue):
    path, message = handlers.export(PASSWORD, "dpo", "all")
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert [r["chosen"][0]["content"] for r in records] == ["Velmora.", "Maren Astley."]
    assert message == "Exported 2 dpo records (all)."
    path, _ = handlers.export(PASSWORD, "hf", "approved")
    with zipfile.ZipFile(path) as archive:
        assert "dataset/state.json" in archive.namelist()


def test_import_reads_only_uploaded_files(handlers, store, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    outside = tmp_path / "server-file.jsonl"
    outside.write_text(json.dumps({"instruction": "Q?", "output": "A."}) + "\n")
    unopenable = (uploads / ("x" * 4000), uploads / ("y/" * 2100), f"{uploads}/nul\x00byte")  # ENAMETOOLONG, NUL
    for path in (outside, uploads / ".." / "server-file.jsonl", "/etc/hostname", uploads, *unopenable):
        with pytest.raises(gr.Error, match="uploaded here"):
            handlers.import_upload(PASSWORD, str(path), "guess from the file", "approved")
    assert store.count_examples() == 0
    inside = uploads / "abc123" / "file.jsonl"
    inside.parent.mkdir()
    inside.write_text(outside.read_text())
    assert handlers.import_upload(PASSWORD, str(inside), "guess from the file", "approved").startswith("Imported 1")


def test_importing_the_same_file_again_says_how_many_rows_it_replaced(handlers, store, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    faq = tmp_path / "faq.jsonl"
    faq.write_text("".join(json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}) + "\n" for i in range(3)))
    first = handlers.import_upload(PASSWORD, str(faq), "guess from the file", "approved")
    assert first == "Imported 3 examples (#1–#3) from faq.jsonl: 3 new, 0 replaced an earlier example of the same question."
    # One answer edited, one question added: the file comes back with four rows.
    faq.write_text(faq.read_text().replace("A1.", "A1, revised.") + json.dumps({"instruction": "Q9?", "output": "A9."}) + "\n")
    again = handlers.import_upload(PASSWORD, str(faq), "guess from the file", "approved")
    assert again.startswith("Imported 4 examples (#4–#7) from faq.jsonl: 1 new, 3 replaced an earlier example")
    assert store.count_examples(status="approved") == 4 and store.count_examples(status="superseded") == 3
    assert store.get_example(2)["superseded_by"] == 5
    # A pending copy replaces nothing until it is approved, and says so.
    pending = handlers.import_upload(PASSWORD, str(faq), "guess from the file", "pending")
    assert "0 new, 0 replaced" in pending and "4 share their question with a stored example" in pending


def test_trim_a_corrections_input_to_its_last_turns(handlers, store):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of Zorvania?"}]
    example_id = store.add_example(chat, "Velmora.", source="correction")
    single = store.add_example("Who wrote Dune?", "Frank Herbert.", source="admin")
    body, *_ = handlers.details(PASSWORD, str(example_id))
    assert "input of 2 turns" in body and "Hello!" in body
    message = handlers.trim_context(PASSWORD, f"{example_id}, {single}", 1)
    assert message.startswith(f"Trimmed the input of 1 example to the last 1 turn: #{example_id}. 1 had 1 turn or fewer.")
    assert store.get_example(example_id)["input"] == chat[-1:]
    body, _, _, history, _ = handlers.details(PASSWORD, str(example_id))
    assert "input of 1 turn" in body and "Hello!" not in body
    assert "input" in list(history["field"]) and "alice" in list(history["actor"])
    assert handlers.trim_context(PASSWORD, str(example_id), 1).startswith("Nothing to trim")
    for bad in (0, None, 2.5):
        with pytest.raises(gr.Error):
            handlers.trim_context(PASSWORD, str(example_id), bad)
    with pytest.raises(gr.Error):
        handlers.trim_context("wrong", str(example_id), 1)


def test_edit_an_examples_input_as_json(handlers, store):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of Zorvania?"}]
    example_id = store.add_example(chat, "Velmora.", source="correction")
    *_, editable = handlers.details(PASSWORD, str(example_id))
    assert json.loads(editable) == chat
    edited = json.dumps([{"role": "system", "content": "Answer with a city."}, chat[-1]])
    assert handlers.save_input(PASSWORD, str(example_id), edited).startswith(f"Saved the edited input of 1 example: #{example_id}")
    assert store.get_example(example_id)["input"] == json.loads(edited)
    assert [h["field"] for h in store.example_history(example_id)][-1] == "input"
    for bad, words in [("[{", "must be JSON"), ('[{"role": "assistant", "content": "x"}]', "end with a user message"),
                       ("[]", "non-empty list"), ("", "must be JSON")]:
        with pytest.raises(gr.Error, match=words):
            handlers.save_input(PASSWORD, str(example_id), bad)
    assert store.get_example(example_id)["input"] == json.loads(edited)  # refused edits changed nothing
    with pytest.raises(gr.Error, match="one example at a time"):
        handlers.save_input(PASSWORD, f"{example_id}, {example_id + 1}", edited)
