"""The Admin tab's examples section: the review queue (the original answer and
the correction side by side; approve, reject, edit, move between splits, one
at a time or in bulk), adding an example by hand, and import/export of files.

Every handler checks the admin password first: all of them are reachable
through Gradio's API whether or not the tab is shown. Nothing here is loaded
through a component's `value=` function, which would be a public endpoint.
Every change is recorded with who made it and when (the example history).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import date, timedelta
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from bot.ui.admin_handlers import Loader, admin_handler
from bot.ui.errors import user_error
from core.errors import ExemplarError, ValidationError
from storage import Store
from storage.examples import count_turns
from storage.exchange import EXPORT_SELECTIONS, export_file, import_file, import_summary
from storage.formats import EXPORT_FORMATS, IMPORT_FORMATS
from storage.vocabulary import ExampleSource, ExampleStatus, Split

ANY = "any"
AUTO = "guess from the file"
AS_IN_FILE = "as the file says"
MAX_IDS = 1000
TABLE_ROWS = 200
COLUMNS = ["id", "status", "source", "split", "question", "original answer", "output", "created", "updated"]
HISTORY_COLUMNS = ["at", "actor", "field", "old value", "new value"]
# Fixed shares of the table's width: the text columns wrap inside them instead of pushing
# the output column off-screen (checked at 1280 px in tests/test_admin_browser.py).
COLUMN_WIDTHS: list[str | int] = ["4%", "8%", "9%", "5%", "19%", "18%", "21%", "8%", "8%"]
HISTORY_WIDTHS: list[str | int] = ["16%", "10%", "10%", "32%", "32%"]


def parse_ids(text: str | None) -> list[int]:
    """Example ids from '3, 5, 7-9' (commas or spaces; ranges with a hyphen), in order, without repeats."""
    ids: list[int] = []
    for part in re.split(r"[,\s]+", (text or "").strip()):
        if not part:
            continue
        match = re.fullmatch(r"#?([0-9]+)(?:-#?([0-9]+))?", part)  # ASCII digits: \d takes "٣" too
        if not match:
            raise ValidationError(f"'{part}' is not an example id: write ids like 3, 5, 7-9")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low or high - low >= MAX_IDS:
            raise ValidationError(f"the range {part} is empty or longer than {MAX_IDS} ids")
        ids.extend(range(low, high + 1))
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ValidationError("Give one or more example ids (click a row, or write ids like 3, 5, 7-9)")
    if len(ids) > MAX_IDS:
        raise ValidationError(f"{len(ids)} ids at once; the limit is {MAX_IDS}")
    return ids


def uploaded_file(upload: Any) -> Path:
    """The path of a file uploaded through Gradio; anything outside Gradio's upload folder is refused,
    so a caller of the Gradio API cannot make the server read a file of its own choosing."""
    from gradio.utils import get_upload_folder

    refused = user_error("Import takes a file uploaded here: choose it with the file picker")
    try:
        path = Path(upload if isinstance(upload, str) else getattr(upload, "name", None) or str(upload)).resolve()
        if not path.is_relative_to(Path(get_upload_folder()).resolve()) or not path.is_file():
            raise refused
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
        raise refused from None
    return path


def day(text: str | None, *, what: str, next_day: bool = False) -> str | None:
    """A YYYY-MM-DD filter as the ISO prefix stored times compare against (the day after, for an inclusive 'until')."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = date.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{what} must be a date written YYYY-MM-DD, not {text!r}") from None
    return (value + timedelta(days=1) if next_day else value).isoformat()


def _short(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(stamp: str | None) -> str:
    return (stamp or "")[:19].replace("T", " ")


def literal_html(text: str) -> str:
    """Stored text for gr.HTML exactly as stored: every character HTML-escaped, line breaks kept.
    The admin reviews what the model will learn, so example text never goes through gr.Markdown,
    which would render its Markdown and typeset its LaTeX ($x^2$, \\frac{a}{b})."""
    return f'<span style="white-space: pre-wrap">{escape(text)}</span>'


def conversation_html(messages: list[dict[str, str]]) -> str:
    """An example's input, one turn a paragraph, each text as stored."""
    return "".join(f"<p><b>{escape(m['role'])}:</b> {literal_html(m['content'])}</p>" for m in messages)


class ReviewHandlers:
    """The section's event handlers, apart from the layout so tests can call them directly.
    Each takes the admin password first and checks it before anything else."""

    # Set by build_review_section: what fills the section in at login, and the box of selected ids
    # with the detail view it drives (the Feedback view's link opens an example through them).
    on_login: Loader
    selection: gr.Textbox
    detail_outputs: list[Any]

    def __init__(
        self, store: Store, check_admin: Callable[[str], None], actor_fn: Callable[[Any], str] | None = None
    ):
        self.store = store
        self.check_admin = check_admin
        self.actor_fn = actor_fn
        self._last_export: Path | None = None

    def _actor(self, request: Any) -> str:
        return self.actor_fn(request) if self.actor_fn else "admin"

    # -- the queue -----------------------------------------------------------

    @admin_handler
    def table(
        self, password: str, status: str, source: str, split: str, since: str, until: str
    ) -> tuple[pd.DataFrame, str]:
        """The examples matching the filters, newest first, and a line saying how many."""
        filters: dict[str, Any] = {
            "status": None if status in (ANY, None) else status,
            "source": None if source in (ANY, None) else source,
            "split": None if split in (ANY, None) else split,
            "since": day(since, what="From"),
            "until": day(until, what="To", next_day=True),
        }
        rows = self.store.list_examples(**filters, limit=TABLE_ROWS)
        total = self.store.count_examples(**filters)
        frame = pd.DataFrame(
            [
                [
                    e["id"], e["status"], e["source"], e["split"], _short(e["input_text"]), _short(e["rejected"]),
                    _short(e["output"]), _when(e["created_at"]), _when(e["updated_at"]),
                ]
                for e in rows
            ],
            columns=COLUMNS,
        )
        shown = f"{total} example{'s' if total != 1 else ''}"
        if total > len(rows):
            shown += f" (the newest {len(rows)} shown; narrow the filters to see others)"
        return frame, shown

    @admin_handler
    def pick(self, password: str, table: Any, event: gr.SelectData) -> str:
        """A click on a table row selects that example."""
        row = event.row_value if event.row_value is not None else table.iloc[event.index[0]].tolist()
        return str(row[0])

    @admin_handler
    def pick_all(self, password: str, table: Any) -> str:
        """Select every example the table shows."""
        ids = [] if table is None or len(table) == 0 else [str(int(v)) for v in table["id"] if str(v).strip()]
        if not ids:
            raise user_error("The table is empty: load examples first")
        return ", ".join(ids)

    @admin_handler
    def details(self, password: str, ids_text: str) -> tuple[str, str, str, pd.DataFrame, str]:
        """The first selected example in full: its conversation, original answer, output, history,
        and its input as JSON for editing."""
        ids = parse_ids(ids_text)
        example = self.store.get_example(ids[0])
        history = self.store.example_history(example["id"])
        turns = count_turns(example["input"])
        heading = (
            f"Example #{example['id']} · {example['status']} · {example['source']} · {example['split']}"
            + f" · input of {turns} turn{'s' if turns != 1 else ''}"
            + (f" · {len(ids) - 1} more selected" if len(ids) > 1 else "")
            + ("" if example["superseded_by"] is None else f" · superseded by #{example['superseded_by']}")
        )
        frame = pd.DataFrame(
            [[_when(h["at"]), h["actor"], h["field"], h["old_value"], h["new_value"]] for h in history],
            columns=HISTORY_COLUMNS,
        )
        body = f"<h4>{escape(heading)}</h4>" + conversation_html(example["input"])
        editable = json.dumps(example["input"], ensure_ascii=False, indent=1)
        return body, example["rejected"] or "", example["output"], frame, editable

    def _change(self, ids_text: str, request: Any, done: str, **change: Any) -> str:
        """Apply `change` to the selected examples (the caller, an admin handler, checked the password)."""
        ids = parse_ids(ids_text)
        self.store.update_examples(ids, actor=self._actor(request), **change)
        listed = ", ".join(f"#{i}" for i in ids[:20]) + (" …" if len(ids) > 20 else "")
        return f"{done} {len(ids)} example{'s' if len(ids) != 1 else ''}: {listed}."

    @admin_handler
    def approve(self, password: str, ids_text: str, request: gr.Request | None = None) -> str:
        """Approve the selected examples: few-shot uses them at once, training next time."""
        return self._change(ids_text, request, "Approved", status=ExampleStatus.APPROVED)

    @admin_handler
    def reject(self, password: str, ids_text: str, request: gr.Request | None = None) -> str:
        """Reject the selected examples: neither few-shot nor training uses them."""
        return self._change(ids_text, request, "Rejected", status=ExampleStatus.REJECTED)

    @admin_handler
    def to_pending(self, password: str, ids_text: str, request: gr.Request | None = None) -> str:
        """Send the selected examples back to the queue."""
        return self._change(ids_text, request, "Returned to review", status=ExampleStatus.PENDING)

    @admin_handler
    def to_train(self, password: str, ids_text: str, request: gr.Request | None = None) -> str:
        """Move the selected examples to the train split."""
        return self._change(ids_text, request, "Moved to train", split=Split.TRAIN)

    @admin_handler
    def to_test(self, password: str, ids_text: str, request: gr.Request | None = None) -> str:
        """Move the selected examples to the held-out test split."""
        return self._change(ids_text, request, "Moved to test", split=Split.TEST)

    @admin_handler
    def trim_context(self, password: str, ids_text: str, keep: Any, request: gr.Request | None = None) -> str:
        """Keep only the last `keep` user turns of the selected examples' inputs (a correction stores
        the whole chat before it); the old input stays in each example's history."""
        ids = parse_ids(ids_text)
        before = {i: count_turns(self.store.get_example(i)["input"]) for i in ids}
        if keep is None or keep == "":
            raise user_error("Say how many of the last turns to keep (1 keeps only the question)")
        self.store.update_examples(ids, actor=self._actor(request), keep_turns=keep)
        trimmed = [i for i in ids if before[i] > int(keep)]
        turns = f"{int(keep)} turn{'s' if int(keep) != 1 else ''}"
        if not trimmed:
            return f"Nothing to trim: the selected example{'s have' if len(ids) > 1 else ' has'} {turns} or fewer."
        listed = ", ".join(f"#{i}" for i in trimmed[:20]) + (" …" if len(trimmed) > 20 else "")
        rest = len(ids) - len(trimmed)
        return (f"Trimmed the input of {len(trimmed)} example{'s' if len(trimmed) != 1 else ''} to the last {turns}: "
                f"{listed}." + (f" {rest} had {turns} or fewer." if rest else "") + " The old input is in the history.")

    @admin_handler
    def save_input(self, password: str, ids_text: str, text: str, request: gr.Request | None = None) -> str:
        """Replace the input of the one selected example with the edited chat messages (JSON)."""
        ids = parse_ids(ids_text)
        if len(ids) != 1:
            raise user_error("Edit one example at a time: select a single id")
        try:
            messages = json.loads(text or "")
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f'The input must be JSON, a list of {{"role": ..., "content": ...}} messages ending with the '
                f"user's question: {exc.msg} at line {exc.lineno}"
            ) from None
        return self._change(str(ids[0]), request, "Saved the edited input of", input=messages)

    @admin_handler
    def save_output(self, password: str, ids_text: str, output: str, request: gr.Request | None = None) -> str:
        """Replace the output of the one selected example with the edited text."""
        ids = parse_ids(ids_text)
        if len(ids) != 1:
            raise user_error("Edit one example at a time: select a single id")
        return self._change(str(ids[0]), request, "Saved the edited output of", output=output)

    # -- adding, importing and exporting ------------------------------------

    @admin_handler
    def add(self, password: str, question: str, answer: str, split: str, request: gr.Request | None = None) -> tuple[str, str, str]:
        """Store an example written by hand, approved (an admin wrote it); clear the boxes."""
        example_id = self.store.add_example(
            question or "", answer or "", source=ExampleSource.ADMIN, status=ExampleStatus.APPROVED,
            split=None if split in (ANY, "auto", None) else split, actor=self._actor(request),
        )
        split_now = self.store.get_example(example_id)["split"]
        return f"Added example #{example_id} (approved, {split_now} split).", "", ""

    @admin_handler(prefix="Nothing was imported. ")
    def import_upload(self, password: str, upload: Any, fmt: str, status: str, request: gr.Request | None = None) -> str:
        """Import an uploaded file: every record, or (on any bad one) none, naming its line."""
        if not upload:
            raise user_error("Choose a file to import first")
        path = uploaded_file(upload)
        report = import_file(
            self.store, path, None if fmt in (AUTO, None) else fmt,
            status=None if status in (AS_IN_FILE, None) else status, actor=self._actor(request),
        )
        return import_summary(report, path.name)

    @admin_handler
    def export(self, password: str, fmt: str, selection: str) -> tuple[str, str]:
        """Write an export file to download (a dataset folder comes zipped)."""
        name = {"jsonl": "examples.jsonl", "dpo": "preference.jsonl", "kto": "unpaired.jsonl", "hf": "dataset"}.get(fmt)
        if name is None:
            raise user_error(f"Unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
        # Gradio copies a returned file into its cache, so only the latest export needs keeping.
        if self._last_export is not None:
            shutil.rmtree(self._last_export, ignore_errors=True)
        folder = self._last_export = Path(tempfile.mkdtemp(prefix="exemplar-export-"))
        try:
            count = export_file(self.store, folder / name, fmt, selection=selection)
        except ExemplarError:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
            raise
        path = folder / name
        if fmt == "hf":
            path = Path(shutil.make_archive(str(folder / "dataset"), "zip", root_dir=folder, base_dir=name))
        return str(path), f"Exported {count} {fmt} records ({selection})."


def build_review_section(
    store: Store,
    check_admin: Callable[[str], None],
    password: gr.Textbox,
    actor_fn: Callable[[Any], str] | None = None,
    *,
    default_status: str = ExampleStatus.PENDING,
) -> ReviewHandlers:
    """Lay out the examples section inside the open Admin tab and attach its events.

    `check_admin(password)` raises gr.Error unless the password is right;
    `actor_fn(request)` names who is acting, recorded in each change's history
    (default "admin").
    """
    handlers = ReviewHandlers(store, check_admin, actor_fn)
    private: dict[str, Any] = {"api_visibility": "private"}

    gr.Markdown("### Examples and review queue")
    with gr.Row():
        status = gr.Dropdown(
            [ANY, *ExampleStatus.values()], value=str(default_status), label="Status", elem_id="review-filter-status"
        )
        source = gr.Dropdown([ANY, *ExampleSource.values()], value=ANY, label="Source", elem_id="review-filter-source")
        split = gr.Dropdown([ANY, *Split.values()], value=ANY, label="Split", elem_id="review-filter-split")
        since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="review-filter-since")
        until = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="review-filter-until")
    with gr.Row():
        load = gr.Button("Load examples", variant="primary", elem_id="review-load")
        select_all = gr.Button("Select all shown", elem_id="review-select-all")
    count = gr.Markdown("Enter the admin password, then load the examples.", elem_id="review-count")
    table = gr.Dataframe(
        headers=COLUMNS, interactive=False, show_search="search", max_height=420, elem_id="review-table", wrap=True,
        column_widths=COLUMN_WIDTHS,
    )
    ids = gr.Textbox(
        label="Selected example ids",
        placeholder="Click a row, or write ids like 3, 5, 7-9",
        elem_id="review-ids",
    )
    details = gr.HTML("", elem_id="review-details")  # example text as stored: no Markdown, no LaTeX
    with gr.Row():
        original = gr.Textbox(label="Original answer (rejected)", interactive=False, lines=5, elem_id="review-original")
        output = gr.Textbox(label="Correction / output (editable)", lines=5, elem_id="review-output")
    with gr.Row():
        approve = gr.Button("Approve", variant="primary", elem_id="review-approve")
        reject = gr.Button("Reject", variant="stop", elem_id="review-reject")
        pending = gr.Button("Back to pending", elem_id="review-pending")
        save = gr.Button("Save edited output", elem_id="review-save")
        to_train = gr.Button("Move to train", elem_id="review-to-train")
        to_test = gr.Button("Move to test", elem_id="review-to-test")
    with gr.Row(equal_height=True):
        keep_turns = gr.Number(
            value=1, minimum=1, precision=0, label="Turns of the input to keep",
            info="A correction stores the whole chat before it; 1 keeps only the question.",
            scale=3, elem_id="review-keep-turns",
        )
        trim = gr.Button("Trim the input to its last turns", scale=1, elem_id="review-trim")
    with gr.Accordion("Edit the input (chat messages as JSON)", open=False):
        input_json = gr.Code(language="json", lines=6, interactive=True, elem_id="review-input")
        save_input = gr.Button("Save the edited input", elem_id="review-save-input")
    result = gr.Markdown("", elem_id="review-result")
    with gr.Accordion("History of the selected example", open=False):
        history = gr.Dataframe(
            headers=HISTORY_COLUMNS, interactive=False, wrap=True, column_widths=HISTORY_WIDTHS, elem_id="review-history"
        )

    with gr.Accordion("Add an example by hand", open=False):
        question = gr.Textbox(label="Question", lines=2, elem_id="add-question")
        answer = gr.Textbox(label="Answer", lines=3, elem_id="add-answer")
        add_split = gr.Radio(["auto", *Split.values()], value="auto", label="Split (auto: a stable 80/20 by question)")
        add = gr.Button("Add example", elem_id="add-example")
        # Each confirmation shows under the button that caused it, not in the queue's line far above.
        added = gr.Markdown("", elem_id="add-result")

    with gr.Accordion("Import and export", open=False):
        with gr.Row():
            upload = gr.File(label="File to import", file_types=[".jsonl", ".json", ".csv", ".txt"], elem_id="import-file")
            with gr.Column():
                import_format = gr.Dropdown([AUTO, *[f for f in IMPORT_FORMATS if f != "hf"]], value=AUTO, label="Format")
                import_status = gr.Dropdown(
                    [AS_IN_FILE, ExampleStatus.PENDING.value, ExampleStatus.APPROVED.value], value=AS_IN_FILE, label="Status of imported examples"
                )
                do_import = gr.Button("Import", elem_id="import-button")
                imported = gr.Markdown("", elem_id="import-result")
        with gr.Row():
            export_format = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Export format")
            export_selection = gr.Dropdown(list(EXPORT_SELECTIONS), value="all", label="Examples")
            do_export = gr.Button("Export", elem_id="export-button")
        exported = gr.Markdown("", elem_id="export-result")
        download = gr.File(label="Download", interactive=False, elem_id="export-file")

    filters = [password, status, source, split, since, until]
    listing = [table, count]
    handlers.on_login = (handlers.table, filters, listing)  # the Admin tab loads the queue at login
    load.click(handlers.table, filters, listing, **private)
    for control in (status, source, split):
        control.input(handlers.table, filters, listing, **private)
    table.select(handlers.pick, [password, table], ids, **private).success(
        handlers.details, [password, ids], [details, original, output, history, input_json], **private
    )
    select_all.click(handlers.pick_all, [password, table], ids, **private)
    ids.submit(handlers.details, [password, ids], [details, original, output, history, input_json], **private)

    def after_change(event: Any) -> None:
        # Refresh the table and the details once a change is stored.
        event.success(handlers.table, filters, listing, **private).then(
            handlers.details, [password, ids], [details, original, output, history, input_json], **private
        )

    for button, action in (
        (approve, handlers.approve),
        (reject, handlers.reject),
        (pending, handlers.to_pending),
        (to_train, handlers.to_train),
        (to_test, handlers.to_test),
    ):
        after_change(button.click(action, [password, ids], result, **private))
    after_change(save.click(handlers.save_output, [password, ids, output], result, **private))
    after_change(trim.click(handlers.trim_context, [password, ids, keep_turns], result, **private))
    after_change(save_input.click(handlers.save_input, [password, ids, input_json], result, **private))
    add.click(handlers.add, [password, question, answer, add_split], [added, question, answer], **private).success(
        handlers.table, filters, listing, **private
    )
    do_import.click(handlers.import_upload, [password, upload, import_format, import_status], imported, **private).success(
        handlers.table, filters, listing, **private
    )
    do_export.click(handlers.export, [password, export_format, export_selection], [download, exported], **private)
    # For views elsewhere that open an example here (the Feedback view's link).
    handlers.selection = ids
    handlers.detail_outputs = [details, original, output, history, input_json]
    return handlers
