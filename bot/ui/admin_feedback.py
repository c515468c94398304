"""The Admin tab's Feedback view: every rating people gave, with its reason,
comment, the answer and question it was about, the model version that answered
and when; filters; the example a rating made; and a JSONL export.

Like the rest of the Admin tab, every handler checks the admin password first:
all of them are reachable through Gradio's API whether or not the tab is shown.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from bot.ui.admin_handlers import Loader, admin_handler
from bot.ui.admin_review import ANY, day, literal_html
from bot.ui.errors import user_error
from core.errors import ExemplarError
from storage import Store
from storage.errors import file_full_message, refuse_when_full
from storage.vocabulary import DISLIKE_REASONS

RATINGS = {ANY: None, "thumbs up": "up", "thumbs down": "down", "withdrawn": "none"}
TABLE_ROWS = 300
COLUMNS = ["id", "time", "rating", "reason", "tags", "score", "comment", "question", "answer", "model", "example",
           "message id"]
SHOWN = {"up": "thumbs up", "down": "thumbs down", None: "withdrawn"}


def _short(text: str | None, limit: int = 200) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _example(row: dict[str, Any]) -> str:
    if not row.get("example_id"):
        return ""
    return f"#{row['example_id']} ({row.get('example_status') or 'gone'})"


class FeedbackHandlers:
    """The view's event handlers, apart from the layout so tests can call them directly."""

    on_login: Loader  # set by build_feedback_section: what fills the view in at login

    def __init__(self, store: Store, check_admin: Callable[[str], None]):
        self.store = store
        self.check_admin = check_admin
        self._last_export: Path | None = None

    def _rows(
        self, rating: str, reason: str, model: str, since: str, until: str, text: str, history: bool, limit: int | None
    ) -> list[dict[str, Any]]:
        return self.store.list_feedback(
            rating=RATINGS.get(rating),
            reason=None if reason in (ANY, None, "") else reason,
            model_version=(model or "").strip() or None,
            since=day(since, what="From"),
            until=day(until, what="To", next_day=True),
            text=(text or "").strip() or None,
            current_only=not history,
            limit=limit,
        )

    @admin_handler
    def table(
        self, password: str, rating: str, reason: str, model: str, since: str, until: str, text: str, history: bool
    ) -> tuple[pd.DataFrame, str]:
        """The ratings matching the filters, newest first, and a line counting them by kind."""
        rows = self._rows(rating, reason, model, since, until, text, history, None)
        shown = rows[:TABLE_ROWS]
        frame = pd.DataFrame(
            [
                [
                    r["id"], (r["created_at"] or "")[:19].replace("T", " "), SHOWN.get(r["rating"], r["rating"]),
                    r["reason"] or "", ", ".join(r.get("tags") or []), r.get("score") or "", _short(r["comment"]),
                    _short(r["question"]), _short(r["answer"]),
                    r["model_version"] or "", _example(r), r["message_id"],
                ]
                for r in shown
            ],
            columns=COLUMNS,
        )
        ups = sum(1 for r in rows if r["rating"] == "up")
        downs = sum(1 for r in rows if r["rating"] == "down")
        what = "ratings (every click)" if history else "ratings (each person's latest per answer)"
        line = f"{len(rows)} {what}: {ups} up, {downs} down, {len(rows) - ups - downs} withdrawn."
        if len(rows) > len(shown):
            line += f" The newest {len(shown)} are shown; narrow the filters or export to see all."
        return frame, line

    @admin_handler
    def details(self, password: str, table: Any, event: gr.SelectData) -> tuple[str, int | None, dict[str, Any]]:
        """A clicked rating in full, and the example it made (if any) to open in the Examples tab."""
        row = event.row_value if event.row_value is not None else table.iloc[event.index[0]].tolist()
        try:
            feedback = self.store.get_feedback(int(row[0]))
            message = self.store.get_message(feedback["message_id"])
        except (ExemplarError, ValueError, TypeError) as exc:
            raise user_error(f"That row cannot be shown: {exc}") from exc
        context = message.get("context") or []
        heading = (
            f"Rating #{feedback['id']} · {SHOWN.get(feedback['rating'], feedback['rating'])}"
            + (f" · {feedback['reason']}" if feedback["reason"] else "")
            + f" · {(feedback['created_at'] or '')[:19].replace('T', ' ')}"
        )
        # HTML with every stored text escaped (gr.HTML): the admin sees what people wrote, not it rendered.
        lines = [
            f"<h4>{escape(heading)}</h4>",
            f"<p><b>Comment:</b> {literal_html(feedback['comment'])}</p>"
            if feedback["comment"] else "<p><i>No comment.</i></p>",
            *([f"<p><b>Tags:</b> {literal_html(', '.join(feedback['tags']))}</p>"] if feedback.get("tags") else []),
            *([f"<p><b>Score:</b> {escape(str(feedback['score']))}/10</p>"] if feedback.get("score") else []),
            "<p><b>Conversation:</b></p>",
            *[f"<blockquote><b>{escape(m['role'])}:</b> {literal_html(m['content'])}</blockquote>" for m in context],
            f"<p><b>Message #{message['id']}</b> by model <b>{escape(message.get('model_version') or '?')}</b>:</p>",
            f"<p>{literal_html(message['content'])}</p>",
        ]
        example_id = feedback.get("example_id")
        if example_id:
            example = self.store.get_example(example_id)
            made = f"({escape(example['status'])}, {escape(example['source'])})"
            lines.append(f"<p><b>Made example #{example_id}</b> {made}.</p>")
        else:
            lines.append("<p><i>This rating made no example</i> (a thumbs-down, or a withdrawn rating).</p>")
        button = gr.update(visible=bool(example_id), value=f"Open example #{example_id} in Examples" if example_id else "")
        return "".join(lines), example_id or None, button

    @admin_handler
    def export(
        self, password: str, rating: str, reason: str, model: str, since: str, until: str, text: str, history: bool
    ) -> tuple[dict[str, Any], str]:
        """The ratings matching the filters as JSONL, one rating a line, for a download."""
        rows = self._rows(rating, reason, model, since, until, text, history, None)
        if self._last_export is not None:  # Gradio copies the file it is given; keep only the latest
            shutil.rmtree(self._last_export, ignore_errors=True)
        folder = self._last_export = Path(tempfile.mkdtemp(prefix="exemplar-feedback-"))
        path = folder / "feedback.jsonl"
        keys = ["id", "created_at", "rating", "reason", "tags", "score", "comment", "question", "answer", "model_version",
                "message_id", "conversation_id", "example_id", "example_status", "rater", "actor"]
        try:
            with refuse_when_full(file_full_message(path)), path.open("w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps({k: row.get(k) for k in keys}, ensure_ascii=False) + "\n")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
            raise
        return gr.update(value=str(path), visible=True), f"Exported {len(rows)} ratings to feedback.jsonl."


def build_feedback_section(store: Store, check_admin: Callable[[str], None], password: gr.Textbox) -> tuple[Any, ...]:
    """Lay out the Feedback view inside the open Admin tab and attach its events.
    Returns (the "open example" button, the state holding its example id), for the
    caller to wire to the Examples tab."""
    handlers = FeedbackHandlers(store, check_admin)
    private: dict[str, Any] = {"api_visibility": "private"}
    gr.Markdown("### Feedback: what people said about the answers")
    with gr.Row():
        rating = gr.Dropdown(list(RATINGS), value=ANY, label="Rating", elem_id="feedback-filter-rating")
        reason = gr.Dropdown([ANY, *[r.lower() for r in DISLIKE_REASONS]], value=ANY, label="Reason",
                             elem_id="feedback-filter-reason")
        model = gr.Textbox(label="Model version", placeholder="e.g. base, v3", elem_id="feedback-filter-model")
        since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="feedback-filter-since")
        until = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="feedback-filter-until")
    with gr.Row():
        text = gr.Textbox(label="Search question, answer and comment", scale=3, elem_id="feedback-filter-text")
        history = gr.Checkbox(label="Every click (history), not only each person's latest rating", value=False,
                              elem_id="feedback-history")
    with gr.Row():
        load = gr.Button("Load feedback", variant="primary", elem_id="feedback-load")
        export = gr.Button("Export JSONL", elem_id="feedback-export")
    count = gr.Markdown("Enter the admin password, then load the feedback.", elem_id="feedback-count")
    download = gr.File(label="Download", interactive=False, visible=False, elem_id="feedback-file")
    table = gr.Dataframe(
        headers=COLUMNS, interactive=False, wrap=True, max_height=520, elem_id="feedback-table",
        column_widths=["4%", "9%", "6%", "7%", "7%", "4%", "13%", "15%", "18%", "6%", "6%", "5%"],
    )
    details = gr.HTML("", elem_id="feedback-details")  # stored text as stored: no Markdown, no LaTeX
    example_id = gr.State(None)
    open_example = gr.Button("Open example", visible=False, elem_id="feedback-open-example")

    filters = [password, rating, reason, model, since, until, text, history]
    load.click(handlers.table, filters, [table, count], **private)
    for control in (rating, reason, history):
        control.input(handlers.table, filters, [table, count], **private)
    for box in (model, since, until, text):
        box.submit(handlers.table, filters, [table, count], **private)
    table.select(handlers.details, [password, table], [details, example_id, open_example], **private)
    export.click(handlers.export, filters, [download, count], **private)
    handlers.on_login = (handlers.table, filters, [table, count])  # the Admin tab loads the list at login
    return handlers, open_example, example_id
