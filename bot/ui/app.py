"""The whole Gradio UI: the Chat tab and the Admin tab in one Blocks app, and its queue settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr

from bot.auth import AdminGuard
from bot.chat.service import ChatService
from bot.ui.admin_tab import build_admin_tab
from bot.ui.chat_tab import build_chat_tab
from bot.ui.errors import NO_ERROR_COVER
from core.training_contract import TrainingController
from storage.text import MAX_SCORE
from storage.vocabulary import DISLIKE_REASONS

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
/* Each answer's badge (bot/ui/chat_tab.py answer_mark), put under it by PAGE_SCRIPT. */
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
#chatbot .answer-rating { border-radius: 999px; padding: 0 8px; background: var(--background-fill-secondary); }
#chatbot .answer-rating-edit, #chatbot .rating-panel button { border: 1px solid var(--border-color-primary);
  border-radius: 6px; padding: 1px 8px; background: var(--background-fill-primary); cursor: pointer; }
#chatbot .answer-rating-edit { font-size: 1em; }
/* The rating panel a thumb opens under its answer (PAGE_SCRIPT). */
#chatbot .rating-panel { flex-basis: 100%; width: 100%; box-sizing: border-box; margin-top: 6px; padding: 8px 10px;
  display: flex; flex-direction: column; gap: 6px; border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: var(--background-fill-secondary); font-size: 0.85em; }
#chatbot .rating-panel-head { font-weight: 600; }
#chatbot .rating-reasons, #chatbot .rating-score, #chatbot .rating-actions { display: flex; flex-wrap: wrap; gap: 4px;
  align-items: center; }
#chatbot .rating-panel button[aria-pressed="true"] { background: var(--color-accent); color: white;
  border-color: var(--color-accent); }
#chatbot .rating-panel textarea, #chatbot .rating-panel input { width: 100%; box-sizing: border-box; padding: 4px 6px;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-primary);
  font: inherit; }
#chatbot .rating-panel .rating-save { font-weight: 600; }
#queued-note { font-size: 0.85em; opacity: 0.85; }
#queued-note-box:has(#queued-note[hidden]) { display: none; }  /* no gap while nothing waits */
/* Narrow screens (a phone, a side panel): the chat comes first and the input box takes the whole width,
   its buttons on the line below; the list of past chats follows the chat. */
@media (max-width: 700px) {
  #chat-history-column { order: 2; }
  #chat-input-row { flex-wrap: wrap; }
  /* Gradio wraps the textbox in a .form block of its own. */
  #chat-input-row > :is(#chat-input, :has(#chat-input)) { flex: 1 1 100% !important; min-width: 100% !important; }
  #chat-input-row > button { flex: 1 1 40% !important; min-width: 0 !important; }
  #correction-row, #rename-row { flex-wrap: wrap; }
  #rename-row > * { flex: 1 1 100% !important; min-width: 100% !important; }
  /* Tables keep readable columns and scroll sideways, rather than a letter a line. */
  .virtual-table-viewport table { min-width: 900px; }
  #correction-row > * { flex: 1 1 100% !important; min-width: 100% !important; }
}
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

# The page's script (the <head> of the page, bot/server.py). Three parts:
# - each answer's badge (the hidden #answer-marks, one .answer-mark per answer in order) put under its
#   answer in the chatbot, again whenever Gradio redraws the chat (a streamed piece, an edit, an undo);
# - the rating panel: a thumb (or "Edit rating details" in a badge) opens it under that answer, with
#   reasons for a 👎, a comment, tags and a 1-10 score, as Open WebUI's; Save sends them to the server
#   through the hidden #rating-bridge (chat_tab.py RATING_BRIDGE_JS, ChatHandlers.rate_details);
# - a sign under the input box while a message sent during an answer waits its turn.
PAGE_SCRIPT = """<script>
(() => {
  const REASONS = %(reasons)s, MAX_SCORE = %(max_score)d;
  let queued = false, panel = null;
  function markOf(row) { return row && row.querySelector(":scope .answer-mark[data-answer]"); }
  function rowOf(answer) {
    const mark = document.querySelector('#chatbot .answer-mark[data-answer="' + answer + '"]');
    return mark && mark.closest(".message-row.bot-row");
  }
  function place(row) { return row.querySelector(".flex-wrap") || row; }
  function answering() { const stop = document.querySelector("#stop-button"); return !!(stop && stop.offsetParent); }
  function sync() {
    queued = false;
    const source = document.querySelector("#answer-marks"), chat = document.querySelector("#chatbot");
    if (!source || !chat) return;
    const marks = source.querySelectorAll(".answer-mark");
    chat.querySelectorAll(".message-row.bot-row").forEach((row, i) => {
      const spot = place(row);
      const shown = spot.querySelector(":scope > .answer-mark"), mark = marks[i];
      if (!mark) { if (shown) shown.remove(); return; }
      if (shown && shown.dataset.source === mark.outerHTML) return;
      const copy = mark.cloneNode(true);
      copy.dataset.source = mark.outerHTML;
      if (shown) shown.replaceWith(copy); else spot.appendChild(copy);
    });
    // Gradio may redraw the row the panel sits in: the same panel (with what was typed) goes back under it.
    if (panel && !panel.isConnected) {
      const row = rowOf(panel.dataset.answer);
      if (row) place(row).appendChild(panel); else panel = null;
    }
    const waiting = document.querySelector("#queued-note");
    if (waiting && !waiting.hidden && !answering()) waiting.hidden = true;
  }
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function closePanel() { if (panel) panel.remove(); panel = null; }
  // A button of a pick-one group (the reasons, the scores): pressed, it lets go of the others; pressed again, of itself.
  function choice(group, attrs, text, chosen) {
    const button = el("button", {type: "button", "aria-pressed": String(chosen), ...attrs}, text);
    button.addEventListener("click", () => {
      const on = button.getAttribute("aria-pressed") !== "true";
      group.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      button.setAttribute("aria-pressed", String(on));
    });
    group.appendChild(button);
  }
  function openPanel(row, rating) {
    const mark = markOf(row);
    if (!mark) return;
    closePanel();
    let saved = {};
    try { saved = JSON.parse(mark.dataset.rating || "{}"); } catch (e) { saved = {}; }
    if (saved.rating !== rating) saved = {};
    panel = el("div", {class: "rating-panel", role: "group", "aria-label": "Rating details"});
    panel.dataset.answer = mark.dataset.answer;
    panel.dataset.rating = rating;
    panel.appendChild(el("div", {class: "rating-panel-head"},
      (rating === "down" ? "👎 What was wrong?" : "👍 What was good?") + " Optional: your thumb is already saved."));
    if (rating === "down") {
      const reasons = el("div", {class: "rating-reasons", role: "group", "aria-label": "Reason"});
      REASONS.forEach((reason) => choice(reasons, {class: "rating-reason"}, reason,
        (saved.reason || "").toLowerCase() === reason.toLowerCase()));
      panel.appendChild(reasons);
    }
    const comment = el("textarea", {class: "rating-comment", maxlength: "2000", rows: "2",
      "aria-label": "Comment", placeholder: "Comment (optional): what should it have said?"});
    comment.value = saved.comment || "";
    const tags = el("input", {class: "rating-tags", maxlength: "300", "aria-label": "Tags",
      placeholder: "Tags (optional, comma-separated): billing, outdated"});
    tags.value = (saved.tags || []).join(", ");
    panel.append(comment, tags);
    const scores = el("div", {class: "rating-score", role: "group", "aria-label": "Score from 1 to " + MAX_SCORE});
    scores.appendChild(el("span", {}, "Score (optional):"));
    for (let n = 1; n <= MAX_SCORE; n++) choice(scores, {"data-score": String(n)}, String(n), saved.score === n);
    panel.appendChild(scores);
    const save = el("button", {type: "button", class: "rating-save"}, "Save details");
    const cancel = el("button", {type: "button", class: "rating-close"}, "Close");
    save.addEventListener("click", () => {
      const reason = panel.querySelector(".rating-reason[aria-pressed=true]");
      const score = panel.querySelector(".rating-score [aria-pressed=true]");
      window.exemplarRate({answer: Number(panel.dataset.answer), rating: panel.dataset.rating,
        reason: reason ? reason.textContent : null, comment: comment.value,
        tags: tags.value, score: score ? Number(score.dataset.score) : null});
      closePanel();
    });
    cancel.addEventListener("click", closePanel);
    panel.addEventListener("keydown", (event) => { if (event.key === "Escape") closePanel(); });
    const actions = el("div", {class: "rating-actions"});
    actions.append(save, cancel);
    panel.appendChild(actions);
    place(row).appendChild(panel);
    panel.scrollIntoView({block: "nearest"});
  }
  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    const edit = target.closest("#chatbot .answer-rating-edit");
    if (edit) {
      const mark = edit.closest(".answer-mark");
      let saved = {};
      try { saved = JSON.parse(mark.dataset.rating || "{}"); } catch (e) { saved = {}; }
      openPanel(edit.closest(".message-row.bot-row"), saved.rating || "down");
      return;
    }
    const thumb = target.closest("#chatbot .message-buttons button[aria-label]");
    if (!thumb) return;
    // The thumbs sit in a bar after their answer's row, not in it.
    let row = thumb.closest(".message-buttons").previousElementSibling;
    while (row && !row.matches(".message-row")) row = row.previousElementSibling;
    if (!row || !row.matches(".bot-row")) return;
    // Read before Gradio handles the click: "Like" raises the thumb, "Liked" takes it back.
    const label = thumb.getAttribute("aria-label");
    if (label === "Like" || label === "Dislike") openPanel(row, label === "Like" ? "up" : "down");
    else if ((label === "Liked" || label === "Disliked") && panel && markOf(row)
             && panel.dataset.answer === markOf(row).dataset.answer) closePanel();
  }, true);
  // Enter while an answer streams: the message waits its turn (trigger_mode="always_last"); say so.
  document.addEventListener("keydown", (event) => {
    const box = event.target instanceof Element && event.target.closest("#chat-input textarea");
    if (!box || event.key !== "Enter" || event.shiftKey || !box.value.trim()) return;
    const note = document.querySelector("#queued-note");
    if (note && answering()) note.hidden = false;
  }, true);
  new MutationObserver(() => { if (!queued) { queued = true; setTimeout(sync, 30); } })
    .observe(document.documentElement, { childList: true, subtree: true, characterData: true });
})();
</script>""" % {"reasons": json.dumps(DISLIKE_REASONS), "max_score": MAX_SCORE}


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
