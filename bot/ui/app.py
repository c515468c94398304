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
#chatbot textarea.edit-textarea { width: 100% !important; min-width: 100% !important; }
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
            """As the page opens: this browser's rater id and its list of past chats."""
            return handlers.new_rater(rater_value), list_chats(*values)

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
