"""The Gradio UI: a Chat tab (streaming, ratings, corrections) and an Admin tab.

The UI keeps, beside the chatbot's history, a list `ids` aligned with it: for
each assistant message, the id of the stored message it shows, so a rating or
correction always points at what the model really said and in what context.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gradio as gr

from bot.admin import AdminGuard
from bot.contracts import TrainingController
from bot.engine import GenerationParams
from bot.service import ChatService
from core.errors import ExemplarError

log = logging.getLogger(__name__)

DISLIKE_REASONS = ("Wrong fact", "Unhelpful", "Too long", "Unsafe")

CSS = """
#answer-info { font-size: 0.85em; opacity: 0.85; }
"""


def text_of(content: Any) -> str:
    """The plain text of a Gradio message content (a string, or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return "" if content is None else str(content)


def normalise_history(history: list[Any] | None) -> list[dict[str, str]]:
    """Gradio's chat history as plain {"role", "content"} messages."""
    out = []
    for message in history or []:
        if isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        else:
            role, content = getattr(message, "role", None), getattr(message, "content", None)
        if role in ("user", "assistant"):
            out.append({"role": role, "content": text_of(content)})
    return out


def _ui_error(exc: ExemplarError) -> gr.Error:
    return gr.Error(str(exc))


class ChatHandlers:
    """The Chat tab's event handlers, separate from layout so tests can call them directly."""

    def __init__(self, service: ChatService):
        self.service = service

    # -- answering -----------------------------------------------------------

    def _params(self, temperature: float | None, max_tokens: float | None) -> GenerationParams:
        defaults = self.service.default_params()
        if temperature is not None:
            defaults.temperature = float(temperature)
        if max_tokens is not None:
            defaults.max_new_tokens = int(max_tokens)
        return defaults

    def _stream(
        self,
        history: list[dict[str, str]],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer the last user message of `history`, yielding (history, conversation_id, ids, info)."""
        messages = list(history)
        if system_prompt and system_prompt.strip():
            messages = [{"role": "system", "content": system_prompt.strip()}, *messages]
        try:
            answer = self.service.answer(
                messages,
                params=self._params(temperature, max_tokens),
                few_shot=bool(few_shot),
                conversation_id=conversation_id,
                source="ui",
            )
        except ExemplarError as exc:
            raise _ui_error(exc) from exc
        try:
            for _piece in answer:
                shown = [*history, {"role": "assistant", "content": answer.generation.text}]
                yield shown, answer.conversation_id, ids, gr.skip()
        except ExemplarError as exc:  # e.g. the upstream model server went away mid-answer
            raise _ui_error(exc) from exc
        shown = [*history, {"role": "assistant", "content": answer.text}]
        new_ids = [*ids[: len(history)], *([None] * (len(history) - len(ids))), answer.message_id]
        yield shown, answer.conversation_id, new_ids, self.describe(answer)

    def describe(self, answer: Any) -> str:
        """The line under the chat that says which model answered and which examples guided it."""
        parts = [f"Answer #{answer.message_id} by model **{answer.model_version}**"]
        examples = answer.few_shot_examples and [
            e for e in answer.few_shot_examples if e["id"] in set(answer.few_shot_ids)
        ]
        if examples:
            parts.append(f"guided by {len(examples)} example{'s' if len(examples) != 1 else ''}")
        text = " · ".join(parts)
        if answer.notices:
            text += "\n\n_" + " ".join(answer.notices) + "_"
        if examples:
            lines = [
                f"- **#{e['id']}** {e['input'][-1]['content'][:200]} → {e['output'][:300]}" for e in examples
            ]
            text += "\n\n<details><summary>Examples used</summary>\n\n" + "\n".join(lines) + "\n\n</details>"
        return text

    def submit(
        self,
        message: str,
        history: list[Any],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """A new user message: clear the box, then stream the answer."""
        if not message or not message.strip():
            raise gr.Error("Type a message first")
        history = [*normalise_history(history), {"role": "user", "content": message.strip()}]
        yield "", history, conversation_id, ids, gr.skip()
        for shown, conv, new_ids, info in self._stream(
            history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens
        ):
            yield gr.skip(), shown, conv, new_ids, info

    def retry(
        self,
        data: gr.RetryData,
        history: list[Any],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer the user message at data.index again (the old answer stays stored)."""
        history = normalise_history(history)[: data.index + 1]
        yield from self._stream(history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens)

    def undo(self, data: gr.UndoData, history: list[Any], ids: list[int | None]) -> tuple[Any, ...]:
        """Take back the last exchange; its user text returns to the input box."""
        history = normalise_history(history)[: data.index]
        return history, ids[: data.index], text_of(data.value)

    def clear(self) -> tuple[Any, ...]:
        return None, [], "", ""

    # -- feedback ------------------------------------------------------------

    def _message_id(self, ids: list[int | None], index: Any) -> int:
        if isinstance(index, (list, tuple)):
            index = index[0]
        if not isinstance(index, int) or index >= len(ids) or ids[index] is None:
            raise gr.Error("That message cannot be rated: only answers given in this chat can")
        return ids[index]

    def like(self, data: gr.LikeData, ids: list[int | None], comment: str | None) -> tuple[str, str]:
        """Thumbs up/down, a dislike reason from the flag menu, or un-rate (the thumb clicked again)."""
        message_id = self._message_id(ids, data.index)
        if data.liked is True:
            rating, reason = "up", None
        elif data.liked is False:
            rating, reason = "down", None
        elif data.liked in DISLIKE_REASONS:
            rating, reason = "down", data.liked.lower()
        else:
            rating, reason = None, None
        try:
            result = self.service.record_feedback(
                message_id, rating=rating, reason=reason, comment=(comment or "").strip() or None, actor="ui"
            )
        except ExemplarError as exc:
            raise _ui_error(exc) from exc
        said = {"up": "Liked", "down": "Disliked", None: "Rating removed"}[rating]
        if reason:
            said += f" ({reason})"
        if result["example_id"]:
            said += f": stored as example #{result['example_id']} ({result['status']})"
        return f"{said} for answer #{message_id}.", ""

    def _correct(self, ids: list[int | None], index: int, previous: str, corrected: str) -> dict[str, Any]:
        message_id = self._message_id(ids, index)
        try:
            return self.service.record_feedback(message_id, correction=corrected, actor="ui") | {"message_id": message_id}
        except ExemplarError as exc:
            raise _ui_error(exc) from exc

    def edit(
        self,
        data: gr.EditData,
        history: list[Any],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
    ) -> Iterator[tuple[Any, ...]]:
        """An edited answer is a correction; an edited question is answered again from there."""
        history = normalise_history(history)
        index = data.index[0] if isinstance(data.index, (list, tuple)) else data.index
        new_text, old_text = text_of(data.value), text_of(data.previous_value)
        if history[index]["role"] == "assistant":
            if new_text.strip() == old_text.strip():
                yield history, conversation_id, ids, gr.skip(), gr.skip()
                return
            result = self._correct(ids, index, old_text, new_text)
            yield history, conversation_id, ids, gr.skip(), self._correction_note(result)
            return
        history = history[: index + 1]
        history[index] = {"role": "user", "content": new_text}
        for shown, conv, new_ids, info in self._stream(
            history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens
        ):
            yield shown, conv, new_ids, info, gr.skip()

    def correct_last(self, corrected: str, history: list[Any], ids: list[int | None]) -> tuple[Any, ...]:
        """The "Correct this answer" box: replace the last answer with the corrected text."""
        history = normalise_history(history)
        if not corrected or not corrected.strip():
            raise gr.Error("Write the corrected answer first")
        index = next((i for i in range(len(history) - 1, -1, -1) if history[i]["role"] == "assistant"), None)
        if index is None:
            raise gr.Error("There is no answer to correct yet")
        result = self._correct(ids, index, history[index]["content"], corrected)
        history[index] = {"role": "assistant", "content": corrected.strip()}
        return history, "", self._correction_note(result)

    @staticmethod
    def _correction_note(result: dict[str, Any]) -> str:
        return (
            f"Correction of answer #{result['message_id']} stored as example #{result['example_id']} "
            f"({result['status']})."
        )


def build_chat_tab(service: ChatService) -> None:
    """Lay out the Chat tab inside the current Blocks context and attach its events."""
    handlers = ChatHandlers(service)
    config = service.config
    conversation_id = gr.State(None)
    ids = gr.State([])
    chatbot = gr.Chatbot(
        label="Exemplar",
        elem_id="chatbot",
        editable="all",
        feedback_options=("Like", "Dislike", *DISLIKE_REASONS),
        height=480,
        buttons=["copy"],
        placeholder="Ask a question. Rate the answers, and edit a wrong one to correct it.",
    )
    info = gr.Markdown("", elem_id="answer-info")
    with gr.Row():
        message = gr.Textbox(
            placeholder="Ask a question…", show_label=False, scale=8, elem_id="chat-input", autofocus=True
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send-button")
    with gr.Row():
        correction = gr.Textbox(
            label="Correct this answer",
            placeholder="Write what the last answer should have said…",
            lines=2,
            scale=8,
            elem_id="correction-input",
        )
        correct = gr.Button("Save correction", scale=1, elem_id="correction-button")
    with gr.Row():
        comment = gr.Textbox(
            label="Comment on your next rating (optional)", scale=8, elem_id="feedback-comment", max_length=2000
        )
    status = gr.Markdown("", elem_id="feedback-status")
    with gr.Accordion("Settings", open=False):
        system_prompt = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt")
        few_shot = gr.Checkbox(
            label="Use approved examples as demonstrations (few-shot)", value=config.few_shot, elem_id="few-shot"
        )
        with gr.Row():
            temperature = gr.Slider(0, 2, value=config.temperature, step=0.05, label="Temperature (0 = greedy)")
            max_tokens = gr.Slider(16, 1024, value=config.max_new_tokens, step=16, label="Max new tokens")
    settings = [system_prompt, few_shot, temperature, max_tokens]

    gr.on(
        [message.submit, send.click],
        handlers.submit,
        [message, chatbot, ids, conversation_id, *settings],
        [message, chatbot, conversation_id, ids, info],
        api_name="chat",
        concurrency_id="generate",
        concurrency_limit=4,
    )
    chatbot.retry(
        handlers.retry,
        [chatbot, ids, conversation_id, *settings],
        [chatbot, conversation_id, ids, info],
        api_visibility="private",
        concurrency_id="generate",
    )
    chatbot.undo(handlers.undo, [chatbot, ids], [chatbot, ids, message], api_visibility="private")
    chatbot.clear(handlers.clear, None, [conversation_id, ids, info, status], api_visibility="private")
    chatbot.like(handlers.like, [ids, comment], [status, comment], api_visibility="private")
    chatbot.edit(
        handlers.edit,
        [chatbot, ids, conversation_id, *settings],
        [chatbot, conversation_id, ids, info, status],
        api_visibility="private",
        concurrency_id="generate",
    )
    correct.click(handlers.correct_last, [correction, chatbot, ids], [chatbot, correction, status], api_visibility="private")


def build_ui(service: ChatService, guard: AdminGuard, *, trainer: TrainingController | None = None) -> gr.Blocks:
    """The whole UI: Chat and Admin tabs."""
    from bot.admin_ui import build_admin_tab

    with gr.Blocks(title="Exemplar") as demo:
        gr.Markdown("## Exemplar · a chat bot that learns from your corrections")
        with gr.Tab("Chat"):
            build_chat_tab(service)
        with gr.Tab("Admin"):
            build_admin_tab(service, guard, trainer=trainer)
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo
