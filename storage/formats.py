"""Example files in and out, in the formats other tools use. Pure conversion:
no SQL here; `storage.exchange` and the HTTP API move the rows in and out of the Store.

Import (`parse_examples`): OpenAI chat JSONL (`messages`), ShareGPT
(`conversations` of from/value), Alpaca (`instruction`/`input`/`output`), CSV
with `input`/`output` columns, TRL preference (`prompt`/`chosen`/`rejected`),
TRL unpaired (`prompt`/`completion`/`label`), and a Hugging Face dataset
folder written by `save_to_disk` holding rows of any of those shapes.

Export (`export_examples`, `write_hf_dataset`): OpenAI chat JSONL, TRL
preference (corrections: the correction chosen, the original rejected), TRL
unpaired (every example labelled true, and each correction's rejected
original labelled false right after it), and a Hugging Face dataset folder.

Every exported record also carries `source`, `status` and `split` (and the
chat JSONL a `rejected` original), which the importers read back, so
export, import into a fresh data dir, and export again gives identical files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from storage.errors import ValidationError, file_full_message, refuse_when_full
from storage.examples import check_choice, validate_messages, validate_output
from storage.text import MAX_JSON_DEPTH, check_json, check_text
from storage.vocabulary import REVIEW_STATUSES, ExampleSource, ExampleStatus, Split

IMPORT_FORMATS = ("jsonl", "sharegpt", "alpaca", "csv", "dpo", "kto", "hf")
EXPORT_FORMATS = ("jsonl", "dpo", "kto", "hf")
FORMAT_HELP = {
    "jsonl": "OpenAI chat JSONL: {'messages': [..., {'role': 'assistant', 'content': answer}]}",
    "sharegpt": "ShareGPT JSONL: {'conversations': [{'from': 'human', 'value': ...}, {'from': 'gpt', 'value': ...}]}",
    "alpaca": "Alpaca JSON or JSONL: {'instruction', 'input' (optional), 'output'}",
    "csv": "CSV with a header row and 'input' and 'output' columns",
    "dpo": "TRL preference JSONL: {'prompt', 'chosen', 'rejected'}",
    "kto": "TRL unpaired JSONL: {'prompt', 'completion', 'label'}",
    "hf": "a Hugging Face dataset folder written by save_to_disk",
}
_ROLES_SHAREGPT = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# -- import ---------------------------------------------------------------------


def parse_examples(data: bytes | str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Parse an example file into rows for `Store.add_examples` (each a dict of `add_example`'s arguments).

    `data` is the file's content (bytes or str), or a Path to a file or to a
    Hugging Face dataset folder. `fmt` is one of IMPORT_FORMATS; None detects
    it (a folder is a dataset, a .csv file CSV, otherwise JSON lines whose
    keys tell the format). Every record is checked before any is returned: the
    first bad one raises ValidationError naming its line ("line 7: ..."), so an
    import stores all records or none.
    """
    if fmt is not None and fmt not in IMPORT_FORMATS:
        raise ValidationError(f"unknown import format {fmt!r}: use one of {', '.join(IMPORT_FORMATS)}")
    if isinstance(data, Path):
        if not data.exists():
            raise ValidationError(f"{data} does not exist")
        if data.is_dir() or fmt == "hf":
            if fmt not in (None, "hf"):
                raise ValidationError(f"{data} is a folder: only the 'hf' format is a folder")
            return _parse_records(_hf_rows(data), None, where="row")
        if fmt is None and data.suffix.lower() == ".csv":
            fmt = "csv"
        data = data.read_bytes()
    if fmt == "hf":
        raise ValidationError("the 'hf' format is a dataset folder: give its path")
    text = _decode(data)
    if fmt == "csv":
        return _parse_records(_csv_rows(text), "csv", where="line")
    if text.lstrip().startswith("["):
        return _parse_records(_json_array_rows(text), fmt, where="record")
    return _parse_records(_jsonl_rows(text), fmt, where="line")


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"the file is not UTF-8 text (byte {exc.start} cannot be read)") from exc


def _jsonl_rows(text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        except RecursionError:
            raise ValidationError(f"line {number}: nested more than {MAX_JSON_DEPTH} levels deep") from None


def _json_array_rows(text: str) -> Iterator[tuple[int, Any]]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError:
        raise ValidationError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if not isinstance(records, list):
        raise ValidationError("a JSON file must hold a list of records (or give one JSON object per line)")
    yield from enumerate(records, 1)


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in ("input", "output") if c not in columns]
    if missing:
        raise ValidationError(f"line 1: the CSV header needs the columns input and output (missing: {', '.join(missing)})")
    start = reader.line_num + 1
    try:
        for row in reader:
            if None in row:
                raise ValidationError(f"line {start}: more fields than the header has columns")
            if any(v is not None and v.strip() for v in row.values()):
                yield start, {k: (v if v != "" else None) for k, v in row.items()}
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ValidationError(f"line {start}: {exc}") from exc


def _hf_rows(folder: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise ValidationError(f"{folder} is not a dataset saved with save_to_disk ({exc})") from exc
    if isinstance(loaded, datasets.DatasetDict):
        number = 0
        for name, part in loaded.items():
            for row in part:
                number += 1
                # A DatasetDict's train/test parts become those splits, unless a row says otherwise.
                if name in Split.values() and row.get("split") is None:
                    row = {**row, "split": name}
                yield number, row
    else:
        yield from enumerate(loaded, 1)


def detect_format(record: Any) -> str | None:
    """The format a record's keys suggest, or None."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "messages" in keys:
        return "jsonl"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "dpo"
    if {"prompt", "completion", "label"} <= keys:
        return "kto"
    if {"input", "output"} <= keys:
        return "plain"
    return None


def _parse_records(records: Iterable[tuple[int, Any]], fmt: str | None, *, where: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None  # the last label-true record of an unpaired (kto) file
    for number, record in records:
        try:
            check_json(record, what="")
            record_fmt = fmt or detect_format(record)
            if record_fmt is None:  # no format given, and none detected
                raise ValidationError(
                    "cannot tell the format from the keys "
                    f"{sorted(record) if isinstance(record, dict) else type(record).__name__}; "
                    "give --format: " + "; ".join(f"{k}: {v}" for k, v in FORMAT_HELP.items())
                )
            if not isinstance(record, dict):
                raise ValidationError(f"expected a JSON object, not {type(record).__name__}")
            if record_fmt == "kto":
                row, previous = _kto_row(record, previous)
                if row is None:  # a rejected original, attached to the correction before it
                    continue
            else:
                row, previous = _PARSERS[record_fmt](record), None
            rows.append(row)
        except ValidationError as exc:
            raise ValidationError(f"{where} {number}: {exc}") from exc
    if not rows:
        raise ValidationError("the file holds no examples")
    return rows


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    """source, status and split from a record's extra keys, checked; defaults for an import."""
    source = check_choice("source", record.get("source") or ExampleSource.IMPORT, ExampleSource)
    status = check_choice("status", record.get("status") or ExampleStatus.APPROVED, REVIEW_STATUSES)
    split = record.get("split") or None
    if split is not None:
        check_choice("split", split, Split)
    return {"source": source, "status": status, "split": split}


def _output(value: Any, what: str) -> str:
    if value is None:
        raise ValidationError(f"{what} is missing or empty")
    return validate_output(value, what=what)


def _rejected(value: Any, key: str = "rejected") -> str | None:
    """A rejected original: a string, or a list of one assistant message. Kept exactly as
    written (it is the model's own text, stored unnormalised), so round trips are exact."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise ValidationError(f"'{key}' must be a string or a list of one assistant message")
        value = value[0].get("content")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{key}' must be a non-empty string or null")
    return check_text(value, f"'{key}'")


def _row(input: Any, output: str, record: dict[str, Any], rejected: str | None = None, what: str = "input") -> dict[str, Any]:
    return {"input": validate_messages(input, what=what), "output": output, "rejected": rejected, **_metadata(record)}


def _split_conversation(messages: Any, what: str) -> tuple[list[dict[str, Any]], Any]:
    """(the turns before the answer, the answer) of a conversation that ends with the assistant."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValidationError(f"{what} must list the conversation and end with the assistant's answer")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValidationError(f"the last of {what} must be the assistant's answer")
    return messages[:-1], last.get("content")


def _parse_openai(record: dict[str, Any]) -> dict[str, Any]:
    messages = record.get("messages")
    input, answer = _split_conversation(messages, "'messages'")
    return _row(input, _output(answer, "the answer"), record, _rejected(record.get("rejected")), what="messages")


def _parse_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ValidationError("'conversations' must be a list of {'from', 'value'} turns")
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        role = _ROLES_SHAREGPT.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise ValidationError(f"conversations[{i}].from must be one of {', '.join(_ROLES_SHAREGPT)}")
        messages.append({"role": role, "content": turn.get("value")})
    input, answer = _split_conversation(messages, "'conversations'")
    return _row(input, _output(answer, "the answer"), record, what="conversations")


def _parse_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    instruction, extra = record.get("instruction"), record.get("input")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValidationError("'instruction' must be a non-empty string")
    if extra is not None and not isinstance(extra, str):
        raise ValidationError("'input' must be a string")
    question = f"{instruction.strip()}\n\n{extra.strip()}" if extra and extra.strip() else instruction
    messages = [{"role": "user", "content": question}]
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
    return _row(messages, _output(record.get("output"), "'output'"), record)


def _parse_plain(record: dict[str, Any]) -> dict[str, Any]:
    question = record.get("input")
    if not isinstance(question, (str, list)):
        raise ValidationError("'input' must be the question (or a list of chat messages)")
    return _row(question, _output(record.get("output"), "'output'"), record, _rejected(record.get("rejected")))


def _prompt(value: Any) -> Any:
    """A TRL prompt: a string, or the conversation as chat messages."""
    if not isinstance(value, (str, list)):
        raise ValidationError("'prompt' must be a string or a list of chat messages")
    return value


def _completion(value: Any, key: str) -> str:
    """A TRL completion: a string, or a list holding one assistant message."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise ValidationError(f"'{key}' must be a string or a list of one assistant message")
        value = value[0].get("content")
    return _output(value, f"'{key}'")


def _parse_dpo(record: dict[str, Any]) -> dict[str, Any]:
    prompt = _prompt(record.get("prompt"))
    chosen = _completion(record.get("chosen"), "chosen")
    return _row(prompt, chosen, record, _rejected(record.get("rejected")), what="prompt")


def _kto_row(record: dict[str, Any], previous: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A label-true record becomes an example; a label-false one is the rejected original of the
    label-true record just before it (the same prompt), which is how export_examples writes them."""
    label = record.get("label")
    if not isinstance(label, bool):
        raise ValidationError("'label' must be true or false")
    prompt = _prompt(record.get("prompt"))
    if label:
        row = _row(prompt, _completion(record.get("completion"), "completion"), record, what="prompt")
        return row, row
    if previous is None or previous["rejected"] is not None or validate_messages(prompt, what="prompt") != previous["input"]:
        raise ValidationError(
            "a label-false completion must follow the label-true completion of the same prompt "
            "(an example needs a good answer; a bad one is kept only beside its correction)"
        )
    previous["rejected"] = _rejected(record.get("completion"), "completion")
    return None, None


_PARSERS = {
    "jsonl": _parse_openai,
    "sharegpt": _parse_sharegpt,
    "alpaca": _parse_alpaca,
    "csv": _parse_plain,
    "plain": _parse_plain,  # JSON lines with input/output keys
    "dpo": _parse_dpo,
}


# -- export ---------------------------------------------------------------------


def _meta(example: dict[str, Any]) -> dict[str, Any]:
    return {"source": example["source"], "status": example["status"], "split": example["split"]}


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def export_records(store_rows: Sequence[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Store example rows as records of an export format (in the order given)."""
    if fmt in ("jsonl", "hf"):
        return [
            {"messages": [*e["input"], *_answer(e["output"])], "rejected": e.get("rejected"), **_meta(e)}
            for e in store_rows
        ]
    if fmt == "dpo":
        return [
            {"prompt": e["input"], "chosen": _answer(e["output"]), "rejected": _answer(e["rejected"]), **_meta(e)}
            for e in store_rows
            if e.get("rejected")
        ]
    if fmt == "kto":
        records = []
        for e in store_rows:
            records.append({"prompt": e["input"], "completion": _answer(e["output"]), "label": True, **_meta(e)})
            if e.get("rejected"):
                records.append({"prompt": e["input"], "completion": _answer(e["rejected"]), "label": False, **_meta(e)})
        return records
    raise ValidationError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")


def export_examples(store_rows: Sequence[dict[str, Any]], fmt: str) -> str:
    """Store example rows as a JSONL document in `fmt`: 'jsonl' (OpenAI chat messages),
    'dpo' (TRL preference pairs, corrections only) or 'kto' (TRL unpaired, labelled).

    For the 'hf' dataset folder use `write_hf_dataset`.
    """
    if fmt == "hf":
        raise ValidationError("the 'hf' format is a folder: write it with write_hf_dataset")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in export_records(store_rows, fmt))


def write_hf_dataset(store_rows: Sequence[dict[str, Any]], folder: str | Path) -> int:
    """Save the rows as a Hugging Face dataset folder (chat `messages` plus metadata); return the row count.

    Written to a temporary folder beside the target and renamed into place.
    """
    import os
    import shutil
    import tempfile

    import datasets

    folder = Path(folder)
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        raise ValidationError(f"{folder} already exists: give a new folder name")
    records = export_records(store_rows, "hf")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with refuse_when_full(file_full_message(folder)):
            datasets.Dataset.from_list(records).save_to_disk(str(tmp))
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(records)
