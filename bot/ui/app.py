"""The whole Gradio UI: the Chat tab and the Admin tab in one Blocks app, and its queue settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from bot.auth import AdminGuard
from bot.chat.service import ChatService
from bot.ui.admin_tab import build_admin_tab
from bot.ui.chat_tab import build_chat_tab
from bot.ui.errors import NO_ERROR_COVER
from core.training_contract import TrainingController

CSS = """
#answer-info { font-size: 0.85em; opacity: 0.85; }
/* The inline editor: as wide as the chat and as tall as the answer it edits (Gradio sizes it from the
   message's measured box, which comes out about 190x60 px), with its icon-only Submit/Cancel labelled. */
#chatbot .message-row:has(textarea.edit-textarea),
#chatbot .message-row:has(textarea.edit-textarea) .flex-wrap,
#chatbot .message-row:has(textarea.edit-textarea) .message { width: 100% !important; max-width: 100% !important; }
#chatbot textarea.edit-textarea {
  width: 100% !important; min-width: 100% !important; min-height: 6em !important; max-height: 60vh;
  field-sizing: content; overflow-y: auto; box-sizing: border-box; resize: vertical;
}
#chatbot .icon-button-wrapper:has(button[aria-label="Submit"]) { width: auto !important; max-width: none !important; }
#chatbot button[aria-label="Submit"], #chatbot button[aria-label="Cancel"] {
  width: auto !important; min-width: max-content !important; flex-shrink: 0; gap: 4px; padding: 0 8px; }
/* ::before, shown after the icon: Gradio's ::after draws the line between the buttons. */
#chatbot button[aria-label="Submit"]::before { content: "Save"; order: 2; font-size: 0.85em; }
#chatbot button[aria-label="Cancel"]::before { content: "Cancel"; order: 2; font-size: 0.85em; }
/* Each answer's badge (bot/ui/chat_tab.py answer_mark), put under it by MARKS_SCRIPT. */
#chatbot .answer-mark { flex-basis: 100%; width: 100%; display: flex; flex-wrap: wrap; gap: 6px; align-items: center;
  margin-top: 4px; font-size: 0.75em; }
#chatbot .answer-mark:empty { display: none; }
#chatbot .answer-badge { border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 0 8px;
  opacity: 0.8; }
#chatbot .answer-corrected { border-radius: 999px; padding: 0 8px; font-weight: 600; background: #fef3c7;
  color: #92400e; }
#chatbot .answer-original { flex-basis: 100%; }
#chatbot .answer-original summary { cursor: pointer; opacity: 0.8; }
#chatbot .answer-original-text { white-space: pre-wrap; overflow-wrap: anywhere; opacity: 0.8; margin-top: 4px;
  padding-left: 8px; border-left: 3px solid var(--border-color-primary); }
.cmp-list { display: flex; flex-direction: column; gap: 12px; }
.cmp-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 12px; }
.cmp-question, .cmp-reference { margin-bottom: 6px; }
.cmp-pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 10px; }
.cmp-answer { border-radius: 6px; padding: 6px 8px; background: var(--background-fill-secondary); }
.cmp-answer.ok { border-left: 4px solid #16a34a; }
.cmp-answer.bad { border-left: 4px solid #dc2626; }
.cmp-head { font-weight: 600; margin-bottom: 4px; }
.cmp-text { white-space: pre-wrap; overflow-wrap: anywhere; }
.cmp-example { opacity: 0.7; font-size: 0.85em; }
""" + NO_ERROR_COVER

# Puts each answer's badge (the hidden #answer-marks, one .answer-mark per answer in order) under its
# answer in the chatbot, again whenever Gradio redraws the chat (a streamed piece, an edit, an undo).
MARKS_SCRIPT = """<script>
(() => {
  let queued = false;
  function sync() {
    queued = false;
    const source = document.querySelector("#answer-marks"), chat = document.querySelector("#chatbot");
    if (!source || !chat) return;
    const marks = source.querySelectorAll(".answer-mark");
    chat.querySelectorAll(".message-row.bot-row").forEach((row, i) => {
      const place = row.querySelector(".flex-wrap") || row;
      const shown = place.querySelector(":scope > .answer-mark"), mark = marks[i];
      if (!mark) { if (shown) shown.remove(); return; }
      if (shown && shown.dataset.source === mark.outerHTML) return;
      const copy = mark.cloneNode(true);
      copy.dataset.source = mark.outerHTML;
      if (shown) shown.replaceWith(copy); else place.appendChild(copy);
    });
  }
  new MutationObserver(() => { if (!queued) { queued = true; setTimeout(sync, 30); } })
    .observe(document.documentElement, { childList: true, subtree: true, characterData: true });
})();
</script>"""


def build_ui(
    service: ChatService,
    guard: AdminGuard,
    *,
    training: TrainingController | None = None,
    serving_warning: Callable[[], str | None] | None = None,
) -> gr.Blocks:
    """The whole UI: Chat and Admin tabs. `serving_warning()` says what an admin must know about the version serving."""
    with gr.Blocks(title="Exemplar") as demo:
        gr.Markdown("## Exemplar · a chat bot that learns from your corrections")
        with gr.Tab("Chat"):
            rater, handlers = build_chat_tab(service)
        with gr.Tab("Admin"):
            build_admin_tab(service, guard, training=training, serving_warning=serving_warning)
        list_chats, list_inputs, list_outputs = handlers.chat_list

        def open_page(rater_value: str | None, *values: Any) -> tuple[Any, ...]:
            """As the page opens: this browser's rater id, its list of past chats and the chat opened last."""
            return handlers.new_rater(rater_value), *list_chats(*values)

        # One load event rather than two: two events joined at once can have the first one's end
        # close the page's event stream as the second joins, which Gradio's browser client (6.31)
        # then never hears about (see bot/ui/admin_tab.py, the login).
        demo.load(open_page, [rater, *list_inputs], [rater, *list_outputs], api_visibility="private")
    demo.queue(default_concurrency_limit=2, max_size=max(64, 4 * service.config.max_batch))
    quiet_queue_polling(demo)
    return demo


# Gradio's queue looks for new events every 1 ms and for progress every 10 ms on Linux (50 and
# 100 ms on Windows), busy or idle: about 1,100 wake-ups a second of the event loop, each taking
# the GIL from the decode thread between its tensor operations. An idle server used 2.5% of a
# core for it here; with these intervals, 0.6%. Polling every 20 ms delays the start of a UI
# event by at most 20 ms, which no person notices.
QUEUE_POLL_SECONDS = 0.02
QUEUE_PROGRESS_POLL_SECONDS = 0.1


def quiet_queue_polling(demo: gr.Blocks) -> None:
    """Make the Gradio queue's polling loops wake 20 ms (progress: 100 ms) apart rather than 1 ms (10 ms)."""
    queue = demo._queue
    if not hasattr(queue, "sleep_when_free") or not hasattr(queue, "progress_update_sleep_when_free"):
        raise RuntimeError("this Gradio's queue has no polling intervals to set: check bot/ui/app.py quiet_queue_polling")
    queue.sleep_when_free = QUEUE_POLL_SECONDS
    queue.progress_update_sleep_when_free = QUEUE_PROGRESS_POLL_SECONDS
