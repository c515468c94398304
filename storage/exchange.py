"""Moving examples between files and the Store: import, export and seeding.
The CLI (`launch.py import/export`, `serve --seed-examples`) and the Admin tab call these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.errors import ValidationError, file_full_message, refuse_when_full
from storage.examples import check_choice
from storage.formats import EXPORT_FORMATS, export_examples, parse_examples, write_hf_dataset
from storage.store import ImportReport, Store
from storage.vocabulary import REVIEW_STATUSES, Actor, ExampleSource, ExampleStatus

# What an export holds. Superseded outputs are history: the newer output of
# the same input is exported instead (and an import could not restore them).
ALL = "all"
EXPORT_SELECTIONS = (*REVIEW_STATUSES, ALL)
# The statuses an import may give every record; 'pending' sends a file through review.
IMPORT_STATUSES = (ExampleStatus.APPROVED, ExampleStatus.PENDING)


def import_file(
    store: Store, path: str | Path, fmt: str | None = None, *, status: str | None = None, actor: str = Actor.ADMIN
) -> ImportReport:
    """Store every example in a file (or dataset folder), or none if any record is bad; report what it did.

    `status` ('approved' or 'pending') overrides the status records carry:
    'pending' sends an untrusted file through the review queue.
    """
    return import_data(store, Path(path), fmt, status=status, actor=actor)


def import_data(
    store: Store, data: bytes | str | Path, fmt: str | None = None, *, status: str | None = None, actor: str = Actor.ADMIN
) -> ImportReport:
    """import_file for data already read (an HTTP body) or a path: every record, or none."""
    rows = parse_examples(data, fmt)
    if status is not None:
        check_choice("status", status, IMPORT_STATUSES)
        rows = [{**row, "status": status} for row in rows]
    return store.import_examples(rows, actor=actor)


def import_summary(report: ImportReport, source: str) -> str:
    """One sentence for a person: how many rows came in, how many were new questions, and how
    many replaced a stored example (a re-import of the same file replaces every row)."""
    ids = report.ids
    if not ids:
        return f"{source} holds no examples: nothing was imported."
    text = f"Imported {len(ids)} example{'s' if len(ids) != 1 else ''} (#{ids[0]}–#{ids[-1]}) from {source}: "
    text += f"{report.new} new, {len(report.replaced)} replaced an earlier example of the same question"
    if report.replaced:
        text += " (kept as history, now superseded)"
    waiting = report.same_question - len(report.replaced)
    if waiting > 0:
        text += f", {waiting} share their question with a stored example they did not replace (one of the two is not approved)"
    return text + "."


def examples_for_export(
    store: Store, selection: str = ALL, *, source: str | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """The examples an export holds, oldest first: one status, or 'all' (every one not superseded),
    optionally of one source and split."""
    if selection != ALL:
        check_choice("export selection", selection, (*ExampleStatus, ALL))
        return store.list_examples(status=selection, source=source, split=split, limit=None, newest_first=False)
    rows = store.list_examples(source=source, split=split, limit=None, newest_first=False)
    return [row for row in rows if row["status"] != ExampleStatus.SUPERSEDED]


def export_file(store: Store, path: str | Path, fmt: str, *, selection: str = "all") -> int:
    """Write the selected examples to `path` in `fmt` (for 'hf', a new folder); return the records written."""
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    rows = examples_for_export(store, selection)
    path = Path(path)
    if fmt == "hf":
        return write_hf_dataset(rows, path)
    text = export_examples(rows, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with refuse_when_full(file_full_message(path)):  # a full disk is StorageFullError, and no .part stays
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return text.count("\n")


def seed_examples(store: Store, path: str | Path, fmt: str | None = None) -> int:
    """Start a data dir from a file of examples, once: if no seed example is stored yet, store the
    file's examples with source 'seed' and return how many; otherwise store nothing and return 0."""
    if store.count_examples(source=ExampleSource.SEED):
        return 0
    rows = [{**row, "source": ExampleSource.SEED} for row in parse_examples(Path(path), fmt)]
    return len(store.add_examples(rows, actor=Actor.ADMIN))
