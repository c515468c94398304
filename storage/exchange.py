"""Moving examples between files and the Store: import, export and seeding.
The CLI (`launch.py import/export`, `serve --seed-examples`) and the Admin tab call these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.errors import ValidationError
from storage.formats import EXPORT_FORMATS, export_examples, parse_examples, write_hf_dataset
from storage.store import Store

# What an export holds. Superseded outputs are history: the newer output of
# the same input is exported instead (and an import could not restore them).
EXPORT_SELECTIONS = ("approved", "pending", "rejected", "all")


def import_file(
    store: Store, path: str | Path, fmt: str | None = None, *, status: str | None = None, actor: str = "import"
) -> list[int]:
    """Store every example in a file (or dataset folder), or none if any record is bad; return the new ids.

    `status` ('approved' or 'pending') overrides the status records carry:
    'pending' sends an untrusted file through the review queue.
    """
    rows = parse_examples(Path(path), fmt)
    if status is not None:
        if status not in ("approved", "pending"):
            raise ValidationError(f"status must be 'approved' or 'pending', not {status!r}")
        rows = [{**row, "status": status} for row in rows]
    return store.add_examples(rows, actor=actor)


def examples_for_export(store: Store, selection: str = "all") -> list[dict[str, Any]]:
    """The examples an export holds, oldest first: one status, or 'all' (every one not superseded)."""
    if selection not in EXPORT_SELECTIONS:
        raise ValidationError(f"export selection must be one of {', '.join(EXPORT_SELECTIONS)}, not {selection!r}")
    status = None if selection == "all" else selection
    rows = store.list_examples(status=status, limit=None, newest_first=False)
    return [row for row in rows if row["status"] != "superseded"]


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
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return text.count("\n")


def seed_examples(store: Store, path: str | Path, fmt: str | None = None) -> int:
    """Start a data dir from a file of examples, once: if no seed example is stored yet, store the
    file's examples with source 'seed' and return how many; otherwise store nothing and return 0."""
    if store.count_examples(source="seed"):
        return 0
    rows = [{**row, "source": "seed"} for row in parse_examples(Path(path), fmt)]
    return len(store.add_examples(rows, actor="seed"))
