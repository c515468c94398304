"""Example files: every import format, exact round trips for every export
format, all-or-nothing imports that name the bad line, seeding, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storage import Store, ValidationError
from storage.exchange import examples_for_export, export_file, import_file, seed_examples
from storage.formats import export_records, parse_examples, write_hf_dataset
from tests.live_app import REPO

EXPORT_FORMATS = ("jsonl", "dpo", "kto", "hf")


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def chat(question, answer, **extra):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


@pytest.fixture
def filled(tmp_path):
    """A store with every kind of example: sources, statuses, splits, a rejected original, a multi-turn input."""
    store = Store(tmp_path / "one" / "exemplar.db")
    store.add_example("How do I reset my Fluxboard password?", "Settings, Account, Reset password.", source="admin", split="train")
    store.add_example(
        [{"role": "system", "content": "You are the Fluxboard help desk."}, {"role": "user", "content": "Does it work offline?"}],
        "Yes, for up to 30 days.", source="correction", rejected="No, never.  ", split="test",
    )
    store.add_example("What is the warranty?", "Two years.", source="upvote", status="pending")
    store.add_example(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Can I pay by card?"}],
        "Yes: Visa and Mastercard.", source="correction", rejected="Only cash.", status="rejected",
    )
    store.add_example("Where is the serial number?", "Under the base.", source="import")
    store.add_example("Where is the serial number?", "On the base, under the rubber foot.", source="admin")  # supersedes
    yield store
    store.close()


def snapshot(path: Path) -> dict[str, bytes] | bytes:
    """A file's bytes, or a folder's files by name."""
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_import_export_gives_identical_files(filled, tmp_path, fmt):
    first = tmp_path / f"first.{fmt}"
    assert export_file(filled, first, fmt, selection="all") > 0
    fresh = Store(tmp_path / "two" / "exemplar.db")
    import_file(fresh, first, fmt)
    second = tmp_path / f"second.{fmt}"
    export_file(fresh, second, fmt, selection="all")
    assert snapshot(second) == snapshot(first)
    fresh.close()


def test_round_trip_keeps_what_the_store_knows(filled, tmp_path):
    path = tmp_path / "all.jsonl"
    export_file(filled, path, "jsonl", selection="all")
    fresh = Store(":memory:")
    import_file(fresh, path)
    keys = ("input", "output", "rejected", "source", "status", "split")
    before = [{k: e[k] for k in keys} for e in examples_for_export(filled, "all")]
    after = [{k: e[k] for k in keys} for e in examples_for_export(fresh, "all")]
    assert after == before and len(after) == 5  # the superseded output is history, not exported


def test_export_formats_hold_the_right_records(filled):
    rows = examples_for_export(filled, "all")
    chat_records = export_records(rows, "jsonl")
    assert all(r["messages"][-1]["role"] == "assistant" for r in chat_records)
    assert chat_records[1]["messages"][0] == {"role": "system", "content": "You are the Fluxboard help desk."}
    dpo = export_records(rows, "dpo")
    assert [r["chosen"][0]["content"] for r in dpo] == ["Yes, for up to 30 days.", "Yes: Visa and Mastercard."]
    assert dpo[0]["rejected"] == [{"role": "assistant", "content": "No, never.  "}]
    assert dpo[0]["prompt"][-1] == {"role": "user", "content": "Does it work offline?"}
    kto = export_records(rows, "kto")
    assert [r["label"] for r in kto] == [True, True, False, True, True, False, True]
    assert kto[2]["completion"][0]["content"] == "No, never.  " and kto[2]["prompt"] == kto[1]["prompt"]
    assert len(examples_for_export(filled)) == 5  # by default every example not superseded
    assert {r["status"] for r in export_records(examples_for_export(filled, "approved"), "jsonl")} == {"approved"}
    assert len(examples_for_export(filled, "approved")) == 3


# -- each import format -----------------------------------------------------------


def test_openai_chat_jsonl_with_and_without_metadata():
    rows = parse_examples(jsonl(
        chat("Q1?", "A1."),
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q2?"},
                      {"role": "assistant", "content": "A2."}], "split": "test", "status": "pending",
         "source": "correction", "rejected": "Wrong."},
    ))
    assert rows[0] == {"input": [{"role": "user", "content": "Q1?"}], "output": "A1.", "rejected": None,
                       "source": "import", "status": "approved", "split": None}
    assert rows[1]["input"][0]["role"] == "system" and rows[1]["split"] == "test"
    assert (rows[1]["status"], rows[1]["source"], rows[1]["rejected"]) == ("pending", "correction", "Wrong.")


def test_sharegpt():
    rows = parse_examples(jsonl({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Price?"}, {"from": "gpt", "value": "  Nine   euros. "},
    ]}), "sharegpt")
    assert [m["role"] for m in rows[0]["input"]] == ["system", "user", "assistant", "user"]
    assert rows[0]["output"] == "Nine euros."  # whitespace normalised


def test_alpaca_jsonl_and_json_array():
    records = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    ]
    for data in (jsonl(*records), json.dumps(records, indent=2)):
        rows = parse_examples(data)
        assert rows[0]["input"] == [{"role": "user", "content": "Translate to French.\n\nGood morning"}]
        assert rows[1]["input"] == [{"role": "user", "content": "Name a colour."}]


def test_csv_with_quoted_newlines(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text('input,output,split\n"Where is it?","Under the base.\nLook closely.",test\nPrice?,Nine euros.,\n')
    rows = parse_examples(path)
    assert rows[0]["output"] == "Under the base.\nLook closely." and rows[0]["split"] == "test"
    assert rows[1] == {"input": [{"role": "user", "content": "Price?"}], "output": "Nine euros.", "rejected": None,
                       "source": "import", "status": "approved", "split": None}


def test_trl_preference_and_unpaired_in_their_string_forms():
    dpo = parse_examples(jsonl({"prompt": "Capital of Zorvania?", "chosen": "Velmora.", "rejected": "Paris."}))
    assert (dpo[0]["output"], dpo[0]["rejected"]) == ("Velmora.", "Paris.")
    kto = parse_examples(jsonl(
        {"prompt": "Capital of Zorvania?", "completion": "Velmora.", "label": True},
        {"prompt": "Capital of Zorvania?", "completion": "Paris.", "label": False},
        {"prompt": "Hi", "completion": "Hello.", "label": True},
    ))
    assert [(r["output"], r["rejected"]) for r in kto] == [("Velmora.", "Paris."), ("Hello.", None)]


def test_hugging_face_dataset_folders(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"instruction": "Q?", "output": "A."}]).save_to_disk(str(tmp_path / "flat"))
    assert parse_examples(tmp_path / "flat")[0]["output"] == "A."
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([chat("Q1?", "A1.")]),
        "test": datasets.Dataset.from_list([chat("Q2?", "A2.")]),
    }).save_to_disk(str(tmp_path / "parts"))
    assert [r["split"] for r in parse_examples(tmp_path / "parts", "hf")] == ["train", "test"]
    with pytest.raises(ValidationError, match="save_to_disk"):
        parse_examples(tmp_path, "hf")


def test_write_hf_dataset_refuses_to_overwrite(filled, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(ValidationError, match="already exists"):
        write_hf_dataset(examples_for_export(filled), tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


# -- malformed files: nothing stored, the line named --------------------------------


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "line 3: not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "Q?"}]}), "line 3: .*assistant"),
        (json.dumps(chat("Q?", "   ")), "line 3: the answer is empty"),
        (json.dumps(chat("Q?", "A.", split="validation")), "line 3: split must be"),
        (json.dumps({"messages": [{"role": "robot", "content": "Q?"}, {"role": "assistant", "content": "A."}]}),
         r"line 3: messages\[0\].role"),
        (json.dumps({"question": "Q?", "answer": "A."}), "line 3: cannot tell the format"),
        (json.dumps(chat("Q?", "x" * 20_001)), "line 3: the answer is 20001 characters"),
    ],
)
def test_a_malformed_import_stores_nothing_and_names_the_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(jsonl(chat("Q1?", "A1.")) + "\n" + bad_line + "\n" + jsonl(chat("Q4?", "A4.")))
    store = Store(":memory:")
    with pytest.raises(ValidationError, match=message):
        import_file(store, path)
    assert store.count_examples() == 0


def test_other_malformed_files_name_the_line_too(tmp_path):
    with pytest.raises(ValidationError, match="line 2: a label-false completion must follow"):
        parse_examples(jsonl({"prompt": "Hi", "completion": "Hello.", "label": True},
                             {"prompt": "Bye", "completion": "No.", "label": False}), "kto")
    with pytest.raises(ValidationError, match="line 1: the CSV header needs the columns input and output"):
        parse_examples("question,answer\nQ?,A.\n", "csv")
    with pytest.raises(ValidationError, match="line 3: 'output' is missing or empty"):
        parse_examples("input,output\nQ?,A.\n\"Multi\nline?\",\n", "csv")
    with pytest.raises(ValidationError, match="record 2"):
        parse_examples(json.dumps([{"instruction": "Q?", "output": "A."}, {"instruction": "", "output": "A."}]))
    with pytest.raises(ValidationError, match="no examples"):
        parse_examples("\n\n")
    with pytest.raises(ValidationError, match="unknown import format"):
        parse_examples("", "parquet")
    with pytest.raises(ValidationError, match="not UTF-8"):
        parse_examples(b"\xff\xfe\x00bad")


def test_a_status_override_sends_an_import_to_the_review_queue(tmp_path):
    path = tmp_path / "untrusted.jsonl"
    path.write_text(jsonl(chat("Q1?", "A1."), chat("Q2?", "A2.", status="approved")))
    store = Store(":memory:")
    import_file(store, path, status="pending", actor="alice")
    assert store.count_examples(status="pending") == 2
    assert store.example_history(1)[0]["actor"] == "alice"


# -- seeding and the shipped example domain ---------------------------------------------


def test_seed_examples_apply_once_and_the_shipped_file_imports():
    shipped = REPO / "examples" / "help_desk.jsonl"
    store = Store(":memory:")
    count = seed_examples(store, shipped)
    assert count >= 15 and store.count_examples(source="seed", status="approved") == count
    assert seed_examples(store, shipped) == 0  # already seeded
    assert store.count_examples() == count


# -- the CLI ----------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, str(REPO / "launch.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_import_and_export(tmp_path):
    data = ["--data-dir", str(tmp_path / "d")]
    good = tmp_path / "good.jsonl"
    good.write_text(jsonl(chat("Q1?", "A1."), chat("Q2?", "A2.", rejected="Wrong.", source="correction")))
    result = run("import", str(good), *data)
    assert result.returncode == 0, result.stderr
    assert "Imported 2 examples" in result.stdout
    result = run("export", str(tmp_path / "out.jsonl"), "--format", "dpo", *data)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out.jsonl").read_text())["chosen"][0]["content"] == "A2."

    bad = tmp_path / "bad.jsonl"
    bad.write_text(jsonl(chat("Q3?", "A3.")) + "{oops\n")
    result = run("import", str(bad), *data)
    assert result.returncode != 0 and "line 2" in result.stderr and "Traceback" not in result.stderr
    assert run("import", str(tmp_path / "missing.jsonl"), *data).returncode != 0
    missing_format = run("export", str(tmp_path / "x.jsonl"), *data)
    assert missing_format.returncode == 2 and "--format" in missing_format.stderr
    assert Store(tmp_path / "d" / "exemplar.db").count_examples() == 2
