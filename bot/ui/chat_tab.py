"""The Chat tab: streaming answers, ratings, corrections, and past chats kept in the browser.

The tab keeps, beside the chatbot's history, a list `ids` aligned with it: for
each assistant message, the id of the stored message it shows, so a rating or
correction always points at what the model really said and in what context.
"""

from __future__ import annotations

import html
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from bot.chat.service import Answer, ChatService
from bot.serving.base import GenerationParams
from bot.ui import chat_history
from bot.ui.errors import user_error
from core.config import MAX_TEMPERATURE
from core.errors import ExemplarError
from core.prompts import with_system
from storage.text import MAX_SCORE, check_score, check_tags
from storage.vocabulary import DISLIKE_REASONS

log = logging.getLogger(__name__)

ANSWERING = "_Answering…_"
CONTINUE_PROMPT = "Please continue where you stopped."
GREEDY_RETRY = (
    "Temperature is 0 (greedy), so Retry gives the same answer unless the model or its examples changed: "
    "raise the temperature in Settings to vary it."
)
RATER_ID = re.compile(r"[0-9a-f]{32}")
# The top of the Max new tokens slider (or the configured default, when that is higher).
MAX_TOKENS_SETTING = 1024
# Send turns into Stop while an answer streams, and back when it ends.
# (Send, Stop, Continue): Continue shows only under an answer cut at the token limit.
BUSY = (gr.update(visible=False), gr.update(visible=True), gr.update(visible=False))
IDLE = (gr.update(visible=True), gr.update(visible=False), gr.skip())
QUEUED_NOTE = (
    '<div id="queued-note" role="status" hidden>⏳ Your message waits its turn: it is sent when this answer ends '
    "(or press Stop).</div>"
)
# Runs once as the page opens (gr.HTML js_on_load): `props` and `trigger` are the bridge component's.
RATING_BRIDGE_JS = (
    "window.exemplarRate = (details) => { props.value = JSON.stringify(details); "
    "setTimeout(() => trigger('submit'), 0); };"
)



def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


def _option(rating: dict[str, Any] | None) -> str | None:
    """A stored rating as the chatbot's thumb: Like, Dislike, or none. (A reason, tags, a score or a
    comment show in the answer's badge, answer_mark.)"""
    if not rating or not rating.get("rating"):
        return None
    return "Like" if rating["rating"] == "up" else "Dislike"


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


def _examples(ids: list[int]) -> str:
    return f"example{'s' if len(ids) > 1 else ''} " + ", ".join(f"#{i}" for i in ids)


def rating_summary(rating: dict[str, Any] | None) -> str:
    """One person's rating of an answer in words (its thumb, reason, tags, score and comment), or ""."""
    if not rating or not rating.get("rating"):
        return ""
    return " · ".join(["👍 liked" if rating["rating"] == "up" else "👎 disliked", *rating_details(rating)])


def rating_details(rating: dict[str, Any]) -> list[str]:
    """What a rating says beyond its thumb, in words: its reason, tags, score and comment."""
    parts = []
    if rating.get("reason"):
        parts.append(str(rating["reason"]))
    if rating.get("tags"):
        parts.append(", ".join(f"#{t}" for t in rating["tags"]))
    if rating.get("score"):
        parts.append(f"{rating['score']}/{MAX_SCORE}")
    if rating.get("comment"):
        comment = str(rating["comment"])
        parts.append(f"“{comment[:80]}{'…' if len(comment) > 80 else ''}”")
    return parts


def answer_mark(
    message_id: int | None, source: dict[str, Any] | None, rating: dict[str, Any] | None = None
) -> str:
    """The badge under one answer (HTML): its message number, which kind of answer it is and what
    made it; once corrected, a "corrected" mark with the original answer a click away; once rated,
    this person's rating in words, with a button that opens the rating panel (PAGE_SCRIPT in
    bot/ui/app.py, which also reads the rating back from the data- attributes to fill the panel in).
    Built from what the store keeps, so it is the same after an undo, a correction or a reopening."""
    if message_id is None or source is None:
        return '<div class="answer-mark"></div>'
    if source.get("from_example") is not None:
        kind = f"stated from example #{source['from_example']}, word for word"
    elif source.get("related_ids"):
        kind = f"no example answers this yet · related {_examples(source['related_ids'])}"
    else:
        kind = f"by model {source.get('model_version') or '(unknown version)'}"
        guided = len(source.get("few_shot_ids") or [])
        if guided:
            kind += f" · guided by {guided} example{'s' if guided != 1 else ''}"
    parts = [f'<span class="answer-badge">message #{message_id} · {html.escape(kind)}</span>']
    if source.get("correction") is not None:
        parts.append('<span class="answer-corrected">✎ corrected</span>')
        parts.append(
            '<details class="answer-original"><summary>Original answer</summary>'
            f'<div class="answer-original-text">{html.escape(source.get("content") or "")}</div></details>'
        )
    summary = rating_summary(rating)
    attributes = f'data-answer="{message_id}"'
    if summary and rating is not None:
        parts.append(
            f'<span class="answer-rating">{html.escape(summary)}</span>'
            '<button type="button" class="answer-rating-edit">Edit rating details</button>'
        )
        saved = {k: rating.get(k) for k in ("rating", "reason", "comment", "tags", "score")}
        attributes += f' data-rating="{html.escape(json.dumps(saved), quote=True)}"'
    return f'<div class="answer-mark" {attributes}>{"".join(parts)}</div>'


def _ui_error(exc: ExemplarError) -> gr.Error:
    return user_error(str(exc))


def _setting(value: object, name: str, low: float, high: float, *, whole: bool = False) -> float:
    """A slider's value as a float, or a gr.Error naming the setting and its range."""
    # bool is an int to Python, and NaN fails every comparison, so both fall out here.
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
            or (whole and value != int(value))):
        raise user_error(f"{name} must be {'a whole number' if whole else 'a number'} from {low:g} to {high:g}.")
    return float(value)


def _index(index: Any) -> Any:
    """A chat message's index as Gradio gives it in event data (an int, or [row, column])."""
    return index[0] if isinstance(index, (list, tuple)) else index


class ChatHandlers:
    """The Chat tab's event handlers, separate from layout so tests can call them directly."""

    # Set by build_chat_tab: (function, inputs, outputs) that fill in the list of past chats as the page opens.
    chat_list: tuple[Callable[..., Any], list[Any], list[Any]]

    def __init__(self, service: ChatService):
        self.service = service
        # The answer each browser session is streaming, so its Stop button can end it.
        self._active: dict[str, Answer] = {}
        self._stopped: dict[int, bool] = {}
        self._cut: dict[str, bool] = {}

    # -- answering -----------------------------------------------------------

    def _params(self, temperature: object, max_tokens: object) -> GenerationParams:
        """The Settings sliders' values. Gradio's own API passes anything through (a string, a bool,
        None, NaN, infinity, 1e308), so each must be a number in the slider's range: else a message."""
        params = self.service.default_params()
        top = max(MAX_TOKENS_SETTING, params.max_new_tokens)
        params.temperature = _setting(temperature, "Temperature", 0, MAX_TEMPERATURE)
        params.max_new_tokens = int(_setting(max_tokens, "Max new tokens", 1, top, whole=True))
        return params

    def _stream(
        self,
        history: list[dict[str, str]],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
        rater: str | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer the last user message of `history`, yielding (history, conversation_id, ids, info).

        The answer's id is known before its first piece and goes out with the first
        yield, so it can be rated (or stopped) while it streams.
        """
        messages = with_system(history, system_prompt)
        params = self._params(temperature, max_tokens)
        try:
            answer = self.service.answer(
                messages, params=params, few_shot=bool(few_shot), conversation_id=conversation_id, source="ui"
            )
        except ExemplarError as exc:
            raise _ui_error(exc) from exc
        new_ids = [*ids[: len(history)], *([None] * (len(history) - len(ids))), answer.message_id]
        key = _session(request)
        self._active[key] = answer
        try:
            yield history, answer.conversation_id, new_ids, ANSWERING
            for _piece in answer:
                shown = [*history, {"role": "assistant", "content": answer.generation.text}]
                yield shown, answer.conversation_id, new_ids, gr.skip()
        except ExemplarError as exc:  # e.g. the upstream model server went away mid-answer
            raise _ui_error(exc) from exc
        finally:
            if self._active.get(key) is answer:
                del self._active[key]
        stopped = self._stopped.pop(id(answer), False)
        self._cut[key] = not stopped and answer.generation.finish_reason == "length"
        shown = [*history, {"role": "assistant", "content": answer.text}]
        yield shown, answer.conversation_id, new_ids, self.describe(answer, params=params, stopped=stopped)

    def stop(self, request: gr.Request | None = None) -> Any:
        """The Stop button: end this browser session's answer; the text so far is kept."""
        answer = self._active.get(_session(request))
        if answer is None:
            return gr.skip()
        self._stopped[id(answer)] = True
        answer.cancel()
        return "Stopping…"

    def feedback_values(self, history: list[dict[str, str]], ids: list[int | None], rater: str | None) -> list[str | None]:
        """The thumb or reason each answer of the chat shows: this person's current rating in the store."""
        answer_ids = [ids[i] if i < len(ids) else None for i, m in enumerate(history) if m["role"] == "assistant"]
        current = self.service.current_ratings([i for i in answer_ids if i is not None], rater=rater)
        return [_option(current.get(i)) if i is not None else None for i in answer_ids]

    def marks(self, history: list[Any], ids: list[int | None], rater: str | None = None) -> str:
        """The badges of every answer of the chat, in order, with this person's ratings (see
        answer_mark); the page's script (bot/ui/app.py, PAGE_SCRIPT) puts each under its answer."""
        history = normalise_history(history)
        ids = ids or []
        answer_ids = [ids[i] if i < len(ids) else None for i, m in enumerate(history) if m["role"] == "assistant"]
        answer_ids += ids[len(history):]  # the answer starting to stream: its id comes before its first piece
        known = [i for i in answer_ids if i is not None]
        sources = self.service.answer_sources(known)
        ratings = self.service.current_ratings(known, rater=rater or None) if rater else {}
        return "".join(
            answer_mark(i, sources.get(i) if i is not None else None, ratings.get(i) if i is not None else None)
            for i in answer_ids
        )

    def describe(self, answer: Any, *, params: GenerationParams | None = None, stopped: bool = False) -> str:
        """The line under the chat that says which model answered and which examples guided it,
        and whether the answer was stopped or cut at the token limit."""
        from_example = answer.from_example
        examples = answer.few_shot_examples and [
            e for e in answer.few_shot_examples if e["id"] in set(answer.few_shot_ids)
        ]
        related = answer.related
        # An answer that could not be stored (storage is full) has no number; its notice says so.
        number = f"Message #{answer.message_id}" if answer.message_id is not None else "Not stored"
        if from_example is not None:  # no model wrote it (ServeConfig.few_shot_direct)
            parts = [number, f"stated from example #{from_example}, word for word"]
        elif related:  # no model wrote it either: the honest reply (bot/serving/retrieval.py RelatedAnswer)
            parts = [
                number,
                f"no example answers this question yet; {_examples([e['id'] for e in related])} "
                "shown as related, not as the answer",
            ]
        else:
            parts = [f"{number} by model **{answer.model_version}**"]
        if examples and from_example is None:
            parts.append(f"guided by {len(examples)} example{'s' if len(examples) != 1 else ''}")
        text = " · ".join(parts)
        notices = list(answer.notices)
        if related:
            notices.append("Know the answer? Write it in \"Correct this answer\" below (or edit the reply): the next "
                           "time this is asked, it is the answer.")
        if stopped:
            notices.append("Stopped: the answer so far is kept.")
        elif answer.generation.finish_reason == "length":
            limit = params.max_new_tokens if params else "the"
            notices.append(
                f"Cut at the {limit}-token limit: press Continue, or raise Max new tokens in Settings."
            )
        if notices:
            text += "\n\n_" + " ".join(notices) + "_"
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
        rater: str | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """A new user message: clear the box, turn Send into Stop, then stream the answer."""
        if not message or not message.strip():
            raise user_error("Type a message first")
        history = [*normalise_history(history), {"role": "user", "content": message.strip()}]
        yield "", history, conversation_id, ids, gr.skip(), *BUSY
        for shown, conv, new_ids, info in self._stream(
            history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens, rater, request
        ):
            yield gr.skip(), shown, conv, new_ids, info, *BUSY

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
        rater: str | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer the user message at data.index again (the old answer stays stored)."""
        history = normalise_history(history)[: _index(data.index) + 1]
        greedy = self._params(temperature, max_tokens).temperature == 0
        for shown, conv, new_ids, info in self._stream(
            history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens, rater, request
        ):
            if greedy and isinstance(info, str) and info != ANSWERING:
                info += "\n\n_" + GREEDY_RETRY + "_"
            yield shown, conv, new_ids, info, *BUSY

    def continue_answer(
        self,
        history: list[Any],
        ids: list[int | None],
        conversation_id: int | None,
        system_prompt: str | None,
        few_shot: bool,
        temperature: float | None,
        max_tokens: float | None,
        rater: str | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The Continue button under an answer cut at the token limit: ask for the rest."""
        yield from self.submit(
            CONTINUE_PROMPT, history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens,
            rater, request,
        )

    def undo(self, data: gr.UndoData, history: list[Any], ids: list[int | None]) -> tuple[Any, ...]:
        """Take back the last exchange; its user text returns to the input box, the info line clears."""
        index = _index(data.index)
        return normalise_history(history)[:index], ids[:index], text_of(data.value), ""

    def clear(self) -> tuple[Any, ...]:
        """The chatbot's Clear button: a new chat, as New chat (the cleared one stays in the list)."""
        return gr.update(feedback_value=[]), None, [], "", "", None, gr.update(value=None)

    def idle(
        self, history: list[Any], ids: list[int | None], rater: str | None = None, request: gr.Request | None = None
    ) -> tuple[Any, ...]:
        """After an answer (or an error): every answer's thumb is set from the store, so ratings
        stay visible for the whole chat; Stop turns back into Send; Continue shows if the answer was cut."""
        cut = self._cut.pop(_session(request), False)
        thumbs = gr.update(feedback_value=self.feedback_values(normalise_history(history), ids or [], rater))
        return thumbs, gr.update(visible=True), gr.update(visible=False), gr.update(visible=cut)

    # -- past chats (kept in this browser) -------------------------------------

    @staticmethod
    def listing(chats: Any, query: str | None, chosen: str | None) -> Any:
        """The list of past chats, those matching the search box, with `chosen` chosen if it is among them."""
        shown = chat_history.choices(chats, query)
        return gr.update(choices=shown, value=chosen if any(key == chosen for _, key in shown) else None)

    def save_chat(
        self, key: str | None, history: list[Any], ids: list[int | None], chats: Any, query: str | None = ""
    ) -> tuple[Any, ...]:
        """After each change to the open chat: save it at the top of this browser's list."""
        key, chats = chat_history.remember(chats, key, normalise_history(history), ids or [])
        return key, chats, self.listing(chats, query, key)

    def idle_and_save(
        self, history: list[Any], ids: list[int | None], rater: str | None, key: str | None, chats: Any,
        query: str | None = "", request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """After an answer: `idle`, and the chat saved in this browser's list, in one event
        (one step fewer between an answer's end and the next message)."""
        return (*self.idle(history, ids, rater, request), *self.save_chat(key, history, ids, chats, query))

    def reopen_last(self, chats: Any, rater: str | None = None) -> tuple[Any, ...]:
        """As the page opens: the list of past chats, the chat opened last shown again (with this
        person's ratings) and chosen in it, and Undo delete while a deleted chat can come back.
        Returns the list, chatbot, ids, chat key, the note under the list and Undo delete."""
        chat = chat_history.last_opened(chats)
        undo = gr.update(visible=chat_history.deleted(chats) is not None)
        if chat is None:
            return self.listing(chats, "", None), gr.skip(), gr.skip(), gr.skip(), gr.skip(), undo
        history, ids = chat["history"], chat["ids"]
        thumbs = self.feedback_values(history, ids, rater)
        return (
            self.listing(chats, "", chat["key"]), gr.update(value=history, feedback_value=thumbs), ids, chat["key"],
            f"Reopened “{chat['title']}”, the chat you were in.", undo,
        )

    def search_chats(self, query: str | None, chats: Any, chosen: str | None) -> Any:
        """The search box: the list narrowed to the chats whose title or messages hold every word typed."""
        return self.listing(chats, query, chosen)

    def rename_chat(self, key: str | None, name: str | None, chats: Any, query: str | None = "") -> tuple[Any, ...]:
        """Rename the chat chosen in the list (an empty name gives it back its first question).
        Returns the saved chats, the list, the emptied name box and the note under the list."""
        if not key or chat_history.find(chats, key) is None:
            raise user_error("Pick a chat in the list first")
        chats = chat_history.rename(chats, key, name)
        chat = chat_history.find(chats, key)
        said = f"Renamed it “{chat['title']}”." if chat and chat["name"] else "Named it by its first question again."
        return chats, self.listing(chats, query, key), "", said

    @staticmethod
    def chosen(key: str | None) -> Any:
        """Delete (and Rename) follow the list: usable only while a chat is chosen in it."""
        return gr.update(interactive=bool(key))

    def _idle_only(self, request: gr.Request | None) -> None:
        if self._active.get(_session(request)) is not None:
            raise user_error("Stop the answer first (or wait for it to end)")

    def new_chat(self, request: gr.Request | None = None) -> tuple[Any, ...]:
        """The New chat button: an empty chat (the one open stays in the list).
        Returns the chat view: chatbot, conversation, ids, info, status, chat key, list, Send, Stop, Continue,
        and the note under the list (where the list's actions confirm themselves)."""
        self._idle_only(request)
        return (
            gr.update(value=[], feedback_value=[]), None, [], "", "", None, gr.update(value=None),
            *IDLE[:2], gr.update(visible=False), "",
        )

    def reopen(
        self, key: str | None, chats: Any, rater: str | None = None, request: gr.Request | None = None
    ) -> tuple[Any, ...]:
        """A chat picked in the list: show it again with this person's ratings. It goes on as a new
        stored conversation (see bot/chat_history.py: a conversation id from the browser is never used).
        Returns the saved chats (this one marked opened last), then the chat view."""
        self._idle_only(request)
        chat = chat_history.find(chats, key)
        if chat is None:
            raise user_error("That chat is no longer saved in this browser")
        history, ids = chat["history"], chat["ids"]
        thumbs = self.feedback_values(history, ids, rater)
        return (
            chat_history.opened(chats, chat["key"]),  # it reopens as the page loads, until another is opened
            gr.update(value=history, feedback_value=thumbs), None, ids, "", "", chat["key"],
            gr.update(value=chat["key"]), *IDLE[:2], gr.update(visible=False), f"Reopened “{chat['title']}”.",
        )

    def delete_chat(
        self, key: str | None, open_key: str | None, chats: Any, query: str | None = "",
        request: gr.Request | None = None,
    ) -> tuple[Any, ...]:
        """Delete the chat picked in the list from this browser (what the server stored stays);
        if it is the open one, the view empties. Undo delete brings it back for a while
        (chat_history.UNDO_SECONDS), until the next delete. Returns the list, the chat view, Undo delete."""
        if not key:
            raise user_error("Pick a chat in the list first")
        chats = chat_history.forget(chats, key)
        view = list(self.new_chat(request)) if key == open_key else [gr.skip()] * 11
        view[6] = self.listing(chats, query, None)
        minutes = chat_history.UNDO_SECONDS // 60
        view[10] = f"Deleted the chat from this browser: Undo delete brings it back for {minutes} minutes."
        return chats, *view, gr.update(visible=True)

    def undo_delete(self, chats: Any, query: str | None, open_key: str | None) -> tuple[Any, ...]:
        """Undo delete: the chat deleted last back in the list, if it was deleted a short while ago.
        Returns the saved chats, the list, Undo delete (hidden) and the note under the list."""
        chat, chats = chat_history.restore(chats)
        said = (f"Brought back “{chat['title']}”." if chat else
                f"Nothing to bring back: only the last chat deleted, for {chat_history.UNDO_SECONDS // 60} minutes.")
        return chats, self.listing(chats, query, open_key), gr.update(visible=False), said

    @staticmethod
    def new_rater(rater: str | None) -> str:
        """This browser's rater id: kept in its local storage, made once."""
        return rater if isinstance(rater, str) and RATER_ID.fullmatch(rater) else uuid.uuid4().hex

    # -- feedback ------------------------------------------------------------

    def _message_id(self, ids: list[int | None], index: Any) -> int:
        index = _index(index)
        message_id = ids[index] if isinstance(index, int) and 0 <= index < len(ids) else None
        if message_id is None:
            raise user_error("That message cannot be rated: only answers given in this chat can")
        return message_id

    def like(self, data: gr.LikeData, history: list[Any], ids: list[int | None], rater: str | None = None) -> tuple[Any, ...]:
        """A thumb: up, down, or un-rate (the raised thumb clicked again). It is stored at once; the
        rating panel that opens under the answer (PAGE_SCRIPT) then adds a reason, tags, a score and a
        comment (rate_details). One rating per answer per person: the latest replaces the earlier one.
        Returns the status line and the thumbs of the whole chat as stored."""
        message_id = self._message_id(ids, data.index)
        rating = {True: "up", False: "down"}.get(data.liked) if isinstance(data.liked, bool) else None
        result = self._rate(message_id, rating, rater)
        thumbs = gr.update(feedback_value=self.feedback_values(normalise_history(history), ids, rater))
        return self._rated(message_id, rating, result), thumbs

    def _rate(self, message_id: int, rating: str | None, rater: str | None, **details: Any) -> dict[str, Any]:
        try:
            return self.service.record_feedback(message_id, rating=rating, actor="ui", rater=rater or None, **details)
        except ExemplarError as exc:
            raise _ui_error(exc) from exc

    @staticmethod
    def _rated(message_id: int, rating: str | None, result: dict[str, Any], detail: str = "") -> str:
        said = {"up": "Liked", "down": "Disliked", None: "Rating removed"}[rating] + f" message #{message_id}"
        if detail:
            said += f" ({detail})"
        if result["example_id"]:
            said += f": stored as example #{result['example_id']} ({result['status']})"
        elif result.get("withdrawn"):
            said += f": example #{result['withdrawn']} withdrawn"
        if rating is not None and not detail:
            said += ". Say why in the panel under it (optional)"
        return said + "."

    def rate_details(
        self, details: Any, history: list[Any], ids: list[int | None], rater: str | None = None
    ) -> tuple[Any, ...]:
        """The rating panel's Save (PAGE_SCRIPT sends it as JSON through the hidden #rating-bridge):
        {"answer": message id, "rating": "up"|"down", "reason", "comment", "tags": [..] or "a, b",
        "score": 1..10}. Stored as this person's rating of the answer, refining the thumb. Returns
        the status line, the thumbs of the whole chat and the answers' badges."""
        try:
            data = json.loads(details) if isinstance(details, str) else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise user_error("The rating details did not arrive whole: open the panel and save again")
        answer = data.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, int) or answer not in [i for i in ids or [] if i]:
            raise user_error("That message cannot be rated: only answers given in this chat can")
        rating = data.get("rating")
        if rating not in ("up", "down"):
            raise user_error("Choose 👍 or 👎 first")
        reason = data.get("reason") or None
        if reason is not None and (rating != "down" or reason not in DISLIKE_REASONS):
            raise user_error(f"A reason is one of {', '.join(DISLIKE_REASONS)}, for a 👎")
        comment = data.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > 2000):
            raise user_error("The comment must be text of at most 2000 characters")
        tags = data.get("tags")
        if isinstance(tags, str):  # the panel's box: "billing, outdated"
            tags = tags.split(",")
        try:
            tags, score = check_tags(tags), check_score(data.get("score") or None)
        except ExemplarError as exc:
            raise _ui_error(exc) from exc
        result = self._rate(
            answer, rating, rater, reason=reason.lower() if reason else None,
            comment=(comment or "").strip() or None, tags=tags, score=score,
        )
        said = rating_details({"reason": reason and reason.lower(), "comment": comment, "tags": tags, "score": score})
        thumbs = gr.update(feedback_value=self.feedback_values(normalise_history(history), ids or [], rater))
        return (self._rated(answer, rating, result, " · ".join(said) or "details saved"), thumbs,
                self.marks(history, ids, rater))

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
        rater: str | None = None,
        request: gr.Request | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """An edited answer is a correction; an edited question is answered again from there."""
        history = normalise_history(history)
        index = _index(data.index)
        new_text, old_text = text_of(data.value), text_of(data.previous_value)
        if history[index]["role"] == "assistant":
            if new_text.strip() == old_text.strip():
                yield history, conversation_id, ids, gr.skip(), gr.skip(), *IDLE
                return
            result = self._correct(ids, index, old_text, new_text)
            yield history, conversation_id, ids, gr.skip(), self._correction_note(result), *IDLE
            return
        history = history[: index + 1]
        history[index] = {"role": "user", "content": new_text}
        for shown, conv, new_ids, info in self._stream(
            history, ids, conversation_id, system_prompt, few_shot, temperature, max_tokens, rater, request
        ):
            yield shown, conv, new_ids, info, gr.skip(), *BUSY

    def correct_last(self, corrected: str, history: list[Any], ids: list[int | None]) -> tuple[Any, ...]:
        """The "Correct this answer" box: replace the last answer with the corrected text."""
        history = normalise_history(history)
        if not corrected or not corrected.strip():
            raise user_error("Write the corrected answer first")
        index = next((i for i in range(len(history) - 1, -1, -1) if history[i]["role"] == "assistant"), None)
        if index is None:
            raise user_error("There is no answer to correct yet")
        result = self._correct(ids, index, history[index]["content"], corrected)
        history[index] = {"role": "assistant", "content": corrected.strip()}
        return history, "", self._correction_note(result)

    @staticmethod
    def _correction_note(result: dict[str, Any]) -> str:
        return (
            f"Correction of message #{result['message_id']} stored as example #{result['example_id']} "
            f"({result['status']})."
        )


def build_chat_tab(service: ChatService) -> Any:
    """Lay out the Chat tab inside the current Blocks context and attach its events.
    Returns the browser-stored rater id, which the page load fills in."""
    handlers = ChatHandlers(service)
    config = service.config
    conversation_id = gr.State(None)
    ids = gr.State([])
    rater = gr.BrowserState("", storage_key="exemplar-rater", secret=chat_history.BROWSER_KEY)
    # Gradio encrypts a BrowserState with a key it sends to the page; the fixed key keeps both readable after a restart.
    chats = gr.BrowserState([], storage_key="exemplar-chats", secret=chat_history.BROWSER_KEY)
    chat_key = gr.State(None)  # the open chat's key in `chats`
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=220, elem_id="chat-history-column"):
            new_chat = gr.Button("New chat", elem_id="new-chat")
            search = gr.Textbox(placeholder="Search past chats…", show_label=False, elem_id="chat-search")
            past = gr.Radio(choices=[], value=None, label="Past chats (kept in this browser)", elem_id="chat-history")
            with gr.Row(elem_id="rename-row"):
                rename_name = gr.Textbox(
                    placeholder="New name for the chosen chat", show_label=False, scale=3, max_length=200,
                    elem_id="rename-chat-name",
                )
                rename = gr.Button("Rename", size="sm", scale=1, interactive=False, elem_id="rename-chat")
            # Usable once a chat is chosen (see `chosen`): none is chosen before the page reopens the last one.
            delete = gr.Button(
                "Delete the chosen chat", size="sm", variant="stop", interactive=False, elem_id="delete-chat"
            )
            history_note = gr.Markdown("", elem_id="chat-history-note")  # the list's actions confirm here
            undo_delete = gr.Button("Undo delete", size="sm", visible=False, elem_id="undo-delete")
        with gr.Column(scale=5):
            chatbot = gr.Chatbot(
                label="Exemplar",
                elem_id="chatbot",
                editable="all",
                # Thumbs only: a reason, tags, a score and a comment go in the panel a thumb opens under
                # its answer (PAGE_SCRIPT), not in Gradio's flag menu, which opened off the panel's edge.
                feedback_options=("Like", "Dislike"),
                height=480,
                buttons=["copy"],
                placeholder="Ask a question. Rate the answers, and edit a wrong one to correct it.",
            )
            info = gr.Markdown("", elem_id="answer-info")
            # Every answer's badge, in order; kept out of sight and put under each answer by the page's
            # script (bot/ui/app.py): Gradio's Chatbot has no per-message footer (a metadata title turns the
            # message into a collapsible "thought", and a second content part breaks its edit and copy buttons).
            marks = gr.HTML("", visible="hidden", elem_id="answer-marks")
            # The rating panel's Save arrives here: the page's script calls window.exemplarRate(details),
            # which puts them in this component's value and submits it (rate_details).
            bridge = gr.HTML("", visible="hidden", elem_id="rating-bridge", js_on_load=RATING_BRIDGE_JS)
            with gr.Row(elem_id="chat-input-row"):
                message = gr.Textbox(
                    placeholder="Ask a question… (Enter sends; while an answer streams, it is sent next)",
                    show_label=False,
                    scale=8,
                    elem_id="chat-input",
                    autofocus=True,
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send-button")
                stop = gr.Button("Stop", variant="stop", scale=1, visible=False, elem_id="stop-button")
                more = gr.Button("Continue", scale=1, visible=False, elem_id="continue-button")
            # Shown by the page's script while a message sent during an answer waits its turn.
            gr.HTML(QUEUED_NOTE, elem_id="queued-note-box", padding=False)
            with gr.Row(elem_id="correction-row"):
                correction = gr.Textbox(
                    label="Correct this answer",
                    placeholder="Write what the last answer should have said…",
                    lines=2,
                    scale=8,
                    elem_id="correction-input",
                )
                correct = gr.Button("Save correction", scale=1, elem_id="correction-button")
            status = gr.Markdown("", elem_id="feedback-status")
            with gr.Accordion("Settings", open=False):
                system_prompt = gr.Textbox(label="System prompt", lines=2, elem_id="system-prompt")
                few_shot = gr.Checkbox(
                    label="Use approved examples as demonstrations (few-shot)", value=config.few_shot, elem_id="few-shot"
                )
                with gr.Row():
                    temperature = gr.Slider(0, MAX_TEMPERATURE, value=config.temperature, step=0.05, label="Temperature (0 = greedy)")
                    max_tokens = gr.Slider(16, max(MAX_TOKENS_SETTING, config.max_new_tokens), value=config.max_new_tokens,
                                           step=16, label="Max new tokens")
    settings = [system_prompt, few_shot, temperature, max_tokens, rater]
    buttons = [send, stop, more]
    # Every change to the open chat saves it in this browser's list of past chats: after an answer
    # together with setting the thumbs (one event), after an undo or a correction on its own.
    after_answer = (
        handlers.idle_and_save, [chatbot, ids, rater, chat_key, chats, search],
        [chatbot, *buttons, chat_key, chats, past],
    )
    save = (handlers.save_chat, [chat_key, chatbot, ids, chats, search], [chat_key, chats, past])
    private: dict[str, Any] = {"api_visibility": "private"}
    # The badges follow the answers: every change of the chat's ids (an answer, retry, undo, New chat,
    # reopening a chat) redraws them, and so does a correction (above and below).
    refresh_marks = (handlers.marks, [chatbot, ids, rater], [marks])
    # Unqueued (it only reads the store): queued, a redraw set off while an answer streamed after a
    # rating kept the page's event stream open, and the next answer never finished.
    ids.change(*refresh_marks, queue=False, show_progress="hidden", **private)

    # A message sent while an answer streams waits and is answered next (always_last), never dropped.
    gr.on(
        [message.submit, send.click],
        handlers.submit,
        [message, chatbot, ids, conversation_id, *settings],
        [message, chatbot, conversation_id, ids, info, *buttons],
        api_name="chat",
        concurrency_id="generate",
        # As many chats at once as the engine's batch decodes together.
        concurrency_limit=service.config.max_batch,
        trigger_mode="always_last",
    ).then(*after_answer, **private)
    more.click(
        handlers.continue_answer,
        [chatbot, ids, conversation_id, *settings],
        [message, chatbot, conversation_id, ids, info, *buttons],
        concurrency_id="generate",
        **private,
    ).then(*after_answer, **private)
    stop.click(handlers.stop, None, info, queue=False, **private)
    chatbot.retry(
        handlers.retry,
        [chatbot, ids, conversation_id, *settings],
        [chatbot, conversation_id, ids, info, *buttons],
        concurrency_id="generate",
        **private,
    ).then(*after_answer, **private)
    chatbot.undo(handlers.undo, [chatbot, ids], [chatbot, ids, message, info], **private).then(*save, **private)
    chatbot.clear(handlers.clear, None, [chatbot, conversation_id, ids, info, status, chat_key, past], **private)
    chatbot.like(handlers.like, [chatbot, ids, rater], [status, chatbot], **private).then(*refresh_marks, **private)
    bridge.submit(handlers.rate_details, [bridge, chatbot, ids, rater], [status, chatbot, marks], **private)
    chatbot.edit(
        handlers.edit,
        [chatbot, ids, conversation_id, *settings],
        [chatbot, conversation_id, ids, info, status, *buttons],
        concurrency_id="generate",
        **private,
    ).then(*after_answer, **private).then(*refresh_marks, **private)  # a correction changes no id
    correct.click(
        handlers.correct_last, [correction, chatbot, ids], [chatbot, correction, status], **private
    ).success(*save, **private).then(*refresh_marks, **private)

    # Past chats: New chat, search, reopen one from the list, rename, delete one and undo that.
    chat_view = [chatbot, conversation_id, ids, info, status, chat_key, past, *buttons, history_note]
    new_chat.click(handlers.new_chat, None, chat_view, **private)
    search.change(
        handlers.search_chats, [search, chats, past], past, queue=False, show_progress="hidden",
        trigger_mode="always_last", **private,
    )
    past.input(handlers.reopen, [past, chats, rater], [chats, *chat_view], **private)
    gr.on(
        [rename.click, rename_name.submit], handlers.rename_chat, [past, rename_name, chats, search],
        [chats, past, rename_name, history_note], **private,
    )
    delete.click(handlers.delete_chat, [past, chat_key, chats, search], [chats, *chat_view, undo_delete], **private)
    undo_delete.click(handlers.undo_delete, [chats, search, chat_key], [chats, past, undo_delete, history_note], **private)
    # Every way the choice changes (picked, emptied by New chat or a delete, set by a save, the page
    # opening) enables or disables Delete and Rename; outside the queue, so it never waits behind an answer.
    past.change(handlers.chosen, past, delete, queue=False, show_progress="hidden", **private)
    past.change(handlers.chosen, past, rename, queue=False, show_progress="hidden", **private)
    # Filled in as the page opens: the list, and the chat opened last shown again.
    handlers.chat_list = (
        handlers.reopen_last, [chats, rater], [past, chatbot, ids, chat_key, history_note, undo_delete]
    )
    return rater, handlers
