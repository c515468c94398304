"""OpenAI-compatible chat completions and model list, and the feedback route.

Generation runs on a worker thread; the event loop only awaits its pieces, and
stops the generation when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from bot.api.openwebui import CHAT_HEADER, MESSAGE_HEADER, SOURCE, TASK_HEADER, USER_HEADER, header_id
from bot.api.responses import error_responses
from bot.auth import AdminGuard
from bot.chat.service import Answer, ChatService
from bot.serving.base import GenerationParams
from bot.serving.contracts import AnswerStream
from bot.serving.retrieval import question_of
from core.config import MaxNewTokens, StopText, StopTexts, Temperature, TopP
from core.errors import ExemplarError, StorageFullError, ValidationError
from storage.text import MAX_SCORE, MAX_TAGS, TAG_CHARS, ascii_int
from storage.vocabulary import ExampleStatus, Rating, Role

log = logging.getLogger(__name__)

MODEL_ID = "exemplar"
# Ids are SQLite integers: anything larger cannot name a row (and would overflow the driver).
MAX_ID = 2**63 - 1


def _digits_only(value: Any) -> Any:
    # pydantic reads '+5', '5.0' and '1_000' from a path as 5, 5 and 1000: an id is digits only.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a number written with the digits 0-9")
    return value


RowId = Annotated[int, BeforeValidator(_digits_only), Field(ge=1, le=MAX_ID)]
DISCONNECT_POLL_SECONDS = 0.25


# -- request and response models ---------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    role: Role
    content: str | list[TextPart] = Field(description="The text, or OpenAI-style text parts (joined).")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)  # as UnhonouredFields: 0 is not false

    include_usage: bool = False


class UnhonouredFields(BaseModel):
    """OpenAI request fields that change what an answer means and that Exemplar does not apply yet. They are
    declared so that a request setting one is refused with 400 naming it, never answered as if it had been
    applied. Fields that change nothing a client relies on (`user`, `seed`, `metadata`, `store`,
    `service_tier`, `parallel_tool_calls`, `stream_options`) are accepted, as is any other unknown field."""

    # Strict, so the server takes exactly what /openapi.json promises: `false` is no temperature, `0` no
    # `stream` and "8" no `max_tokens` (422 naming the field). The requests built on this inherit it.
    model_config = ConfigDict(strict=True)

    response_format: dict[str, Any] | None = Field(
        None, description='Only `{"type": "text"}`: answers are not constrained to JSON (json_object, json_schema '
        "are refused with 400)."
    )
    tools: list[Any] | None = Field(None, description="Refused with 400 unless empty: the model calls no tools.")
    functions: list[Any] | None = Field(None, description="The older `tools`; refused with 400 unless empty.")
    tool_choice: str | dict[str, Any] | None = Field(None, description='Refused with 400 unless "none".')
    function_call: str | dict[str, Any] | None = Field(
        None, description='The older `tool_choice`; refused with 400 unless "none".'
    )
    top_logprobs: int | None = Field(None, description="Refused with 400 unless 0: no log probabilities are returned.")
    presence_penalty: float | None = Field(None, description="Refused with 400 unless 0: no penalty is applied.")
    frequency_penalty: float | None = Field(None, description="Refused with 400 unless 0: no penalty is applied.")
    logit_bias: dict[str, float] | None = Field(None, description="Refused with 400 unless empty.")

    def unhonoured(self) -> list[str]:
        """What this request asks for that the server would not do, one problem per field."""
        problems = []
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            problems.append(
                f"response_format {kind!r} is not supported: answers are not constrained to JSON yet; leave "
                'response_format out or send {"type": "text"}'
            )
        for name in ("tools", "functions"):
            if getattr(self, name):
                problems.append(f"{name} are not supported: the model cannot call tools; leave {name} out")
        for name in ("tool_choice", "function_call"):
            value = getattr(self, name)
            if value not in (None, "none"):
                problems.append(f"{name} {value!r} is not supported: the model calls no tools; leave it out or "
                                'send "none"')
        if self.top_logprobs:
            problems.append("top_logprobs is not supported: no log probabilities are returned; leave it out")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value:
                problems.append(f"{name} {value:g} is not supported: no penalty is applied; leave it out or send 0")
        if self.logit_bias:
            problems.append("logit_bias is not supported: the sampler applies no bias; leave it out")
        return problems

    def refuse_unhonoured(self) -> None:
        """Raise ValidationError (400) naming every field set to something the server would not apply."""
        problems = self.unhonoured()
        if problems:
            raise ValidationError("; ".join(problems))


class ChatCompletionRequest(UnhonouredFields):
    """OpenAI's chat completion request, plus `few_shot`. Fields that would change the answer's meaning and are
    not applied are refused (UnhonouredFields); other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 32}]})

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, ending with a user message.")
    model: str | None = Field(
        None,
        description=f"The name of an adapter loaded with POST /v1/load_lora_adapter; anything else "
        f"is answered by the active version ({MODEL_ID}).",
    )
    max_tokens: MaxNewTokens | None = Field(None, description="Cap on the answer's tokens; the server's default if absent.")
    max_completion_tokens: MaxNewTokens | None = Field(None, description="Newer name for max_tokens.")
    temperature: Temperature | None = Field(None, description="0 means greedy decoding.")
    top_p: TopP | None = None
    stop: StopText | StopTexts | None = Field(None, description="Up to 4 strings that end the answer.")
    stream: bool = Field(False, description="Send server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    logprobs: bool | None = Field(None, description="Refused with 400 if true: no log probabilities are returned.")
    few_shot: bool = Field(True, description="Put similar approved examples into the prompt as demonstrations.")

    def unhonoured(self) -> list[str]:
        problems = super().unhonoured()
        if self.logprobs:
            problems.append("logprobs is not supported: no log probabilities are returned; leave it out or false")
        return problems


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RelatedExample(BaseModel):
    id: int
    question: str
    answer: str


class ExemplarInfo(BaseModel):
    model_version: str | None = Field(description="The model version that wrote the answer ('base' or vN).")
    few_shot_ids: list[int] = Field(description="Ids of the examples put into the prompt.")
    from_example: int | None = Field(
        None,
        description="The id of the approved example whose answer this is, word for word, when the question "
        "reworded its question (--few-shot-direct); null when the model wrote the answer.",
    )
    related: list[RelatedExample] = Field(
        default_factory=list,
        description="Approved examples shown in the reply as related, not as the answer: the question has no approved "
        "answer yet, so the reply says so and quotes these (--grounded, and near misses of a stored question). "
        "Empty otherwise. Correcting such a reply (POST /api/feedback) teaches the answer.",
    )
    message_id: int | None = Field(
        description="The stored assistant message id (also `id`, as a string); null when the answer was not stored."
    )
    conversation_id: int | None
    stored: bool = Field(
        True,
        description="False when storage is full: the answer was given but not stored, so it cannot be rated or "
        "corrected (POST /api/feedback would answer 507 meanwhile). The server stores answers again, with no "
        "restart, once the operator frees space.",
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str = Field(
        description="The stored assistant message id, as a string: pass it to POST /api/feedback. "
        "`chatcmpl-unstored-…` when storage is full and the answer was not stored (exemplar.stored is false)."
    )
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    exemplar: ExemplarInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    name: str | None = Field(
        None, description="A name to show, with the version serving now (chat UIs such as Open WebUI show it)."
    )
    parent: str | None = Field(None, description="For a LoRA adapter loaded by name: the model it adapts (as vLLM).")
    root: str | None = Field(None, description="For a LoRA adapter loaded by name: its folder (as vLLM).")
    exemplar: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"message_id": "2", "rating": "down", "correction": "Paris is the capital of France."}]})

    message_id: Annotated[int, Strict(), Field(ge=1, le=MAX_ID)] | str = Field(
        description="A chat completion's `id` (a string) or the message id as a number."
    )
    rating: Rating | None = Field(
        None, description="Thumbs up, thumbs down, or null to withdraw a rating."
    )
    reason: str | None = Field(None, max_length=2000, description="Why the answer was rated so.")
    comment: str | None = Field(None, max_length=2000)
    tags: list[Annotated[str, Field(max_length=TAG_CHARS)]] | None = Field(
        None, max_length=MAX_TAGS, description="Short labels for the rating (as Open WebUI's feedback tags)."
    )
    score: Annotated[int, Strict(), Field(ge=1, le=MAX_SCORE)] | None = Field(
        None, description="An optional score from 1 (worst) to 10 (best)."
    )
    correction: str | None = Field(None, description="The text the answer should have been.")
    user: str | None = Field(
        None,
        max_length=200,
        description="Who rates (your end user's id). Each user has one current rating per answer: "
        "the latest replaces the earlier, and the same rating again stores nothing.",
    )


class FeedbackResult(BaseModel):
    feedback_id: int
    example_id: int | None = Field(description="The example created, if any (a correction or a thumbs-up).")
    status: Literal[ExampleStatus.PENDING, ExampleStatus.APPROVED] | None = Field(
        description="The new example's review status."
    )


def parse_message_id(value: int | str) -> int:
    """Accept the completion id (a string of digits) or the number itself."""
    if isinstance(value, int):
        return value
    try:
        number = ascii_int(value, "message_id")
    except ValidationError:
        number = 0
    if not 1 <= number <= MAX_ID:
        raise ValidationError(f"message_id must be a chat completion id such as '42', not {value!r}")
    return number


# -- generation off the event loop --------------------------------------------


async def pieces(answer: Answer | AnswerStream, request: Request) -> AsyncGenerator[str, None]:
    """Iterate `answer` on a worker thread and yield its text pieces here.

    When the client disconnects (or the consumer stops early) the generation is
    cancelled; the worker then finishes quickly and the partial answer is stored.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def work() -> None:
        try:
            for piece in answer:
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))
        except BaseException as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    worker = threading.Thread(target=work, name="api-answer", daemon=True)
    worker.start()
    finished = False
    checked = time.monotonic()
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                kind, value = "idle", None
            if time.monotonic() - checked >= DISCONNECT_POLL_SECONDS:
                checked = time.monotonic()
                if await request.is_disconnected():
                    return
            if kind == "piece":
                yield value
            elif kind == "done":
                finished = True
                return
            elif kind == "error":
                finished = True
                raise value
    finally:
        if not finished:
            answer.cancel()


def generation_params(service: ChatService, body: ChatCompletionRequest) -> GenerationParams:
    defaults = service.default_params()
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
    return GenerationParams(
        max_new_tokens=max_tokens if max_tokens is not None else defaults.max_new_tokens,
        temperature=body.temperature if body.temperature is not None else defaults.temperature,
        top_p=body.top_p if body.top_p is not None else defaults.top_p,
        stop=stop,
    ).validate()


def served_model(version: str | None) -> str:
    return f"{MODEL_ID}-{version}" if version else MODEL_ID


def usage_of(answer: Answer) -> dict[str, int]:
    prompt, completion = answer.generation.prompt_tokens, answer.generation.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def exemplar_of(answer: Answer) -> dict[str, Any]:
    return {
        "model_version": answer.model_version,
        "few_shot_ids": answer.few_shot_ids,
        "from_example": answer.from_example,
        "related": [{"id": e["id"], "question": question_of(e), "answer": e["output"]} for e in answer.related],
        "message_id": answer.message_id,
        "conversation_id": answer.conversation_id,
        "stored": answer.stored,
    }


def completion_id(answer: Answer) -> str:
    """The completion's `id`: the stored message id, or for an answer storage had no room for, an id
    that names no message (so feedback on it is refused, not misfiled)."""
    return str(answer.message_id) if answer.message_id is not None else f"chatcmpl-unstored-{uuid.uuid4().hex}"


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def stream_events(answer: Answer, request: Request, body: ChatCompletionRequest) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: a role chunk, content chunks, a finish chunk, `[DONE]`.

    Every chunk carries the stored message id. The finish chunk also carries
    `usage` and `exemplar`; with `stream_options.include_usage` a separate
    usage chunk with no choices follows, as OpenAI sends it.
    """
    created = int(time.time())
    base = {"id": completion_id(answer), "object": "chat.completion.chunk", "created": created}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        model = served_model(answer.model_version)
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "model": model, "choices": [choice], **extra})

    # The role chunk waits for the first piece: by then the generation knows its model version.
    opened = False
    try:
        # aclosing: when the client leaves, closing this stream closes `pieces` at once, which cancels.
        async with aclosing(pieces(answer, request)) as stream:
            async for piece in stream:
                if not opened:
                    opened = True
                    yield chunk({"role": "assistant", "content": ""})
                yield chunk({"content": piece})
    except ExemplarError as exc:
        yield sse({"error": str(exc)})
        yield sse("[DONE]")
        return
    if not opened:
        yield chunk({"role": "assistant", "content": ""})
    yield chunk({}, answer.generation.finish_reason, usage=usage_of(answer), exemplar=exemplar_of(answer))
    if body.stream_options and body.stream_options.include_usage:
        model = served_model(answer.model_version)
        yield sse({**base, "model": model, "choices": [], "usage": usage_of(answer)})
    yield sse("[DONE]")


# -- routes ---------------------------------------------------------------------


def chat_router(service: ChatService, lora: Any = None, integration: AdminGuard | None = None) -> APIRouter:
    """`lora` (bot.api_lora.LoraSlots) lets `"model": "<lora_name>"` pick an adapter loaded by name.
    `integration` (the integration token's guard) marks the requests of a linked front end (Open WebUI,
    bot/api/openwebui.py): their answers are linked to the front end's message ids from the headers."""
    # 400: also the Host check (bot/api/middleware.py), which every route passes through.
    router = APIRouter(responses=error_responses(400))

    @router.get("/v1/models", response_model=ModelList, tags=["openai"])
    def list_models() -> dict[str, Any]:
        """The one model this server answers with: whichever version is active."""
        engine = service.engine
        return {
            "object": "list",
            "data": [
                {
                    "id": MODEL_ID,
                    "object": "model",
                    "created": 0,
                    "owned_by": "exemplar",
                    "name": f"Exemplar ({engine.version})",
                    "exemplar": {"model_version": engine.version, "base_model": engine.base_name},
                },
                *(lora.model_cards() if lora is not None else []),
            ],
        }

    @router.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        tags=["openai"],
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "A completion, or SSE chunks when `stream` is true.",
            },
            **error_responses(413, 422, 502, 507),
        },
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """Answer a conversation (OpenAI-compatible). The answer is stored; its `id` is the message id."""
        body.refuse_unhonoured()
        params = generation_params(service, body)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        headers = request.headers
        # A front end's chore (Open WebUI's title or tags of a chat) is answered, not stored: no person asked it.
        keep = header_id(headers.get(TASK_HEADER)) is None
        linked = header_id(headers.get(MESSAGE_HEADER)) if keep else None
        if integration is None or not integration.bearer_matches(headers.get("authorization")):
            linked = None  # only the front end that holds the token links answers to its ids

        def start() -> Answer:
            if lora is not None:
                lora.select(body.model)
            answer = service.answer(messages, params=params, few_shot=body.few_shot, source="api", keep=keep)
            if linked is not None and answer.message_id is not None:
                try:
                    service.store.link_message(
                        SOURCE, linked, answer.message_id, chat_id=header_id(headers.get(CHAT_HEADER)),
                        user_id=header_id(headers.get(USER_HEADER)),
                    )
                except StorageFullError as exc:  # answered all the same; it cannot be rated from there
                    log.warning("Answer %d is not linked to its Open WebUI message: %s", answer.message_id, exc)
                except BaseException:
                    answer.cancel()
                    raise
            return answer

        answer = await run_in_threadpool(start)
        if body.stream:
            return StreamingResponse(
                stream_events(answer, request, body),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async with aclosing(pieces(answer, request)) as stream:
            async for _ in stream:
                pass
        return {
            "id": completion_id(answer),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_model(answer.model_version),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.generation.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage_of(answer),
            "exemplar": exemplar_of(answer),
        }

    @router.post("/api/feedback", status_code=201, response_model=FeedbackResult, tags=["feedback"],
                 responses=error_responses(404, 413, 422, 507))
    async def feedback(body: FeedbackRequest) -> Any:
        """Rate and/or correct a stored answer; creates the example exactly as the UI does."""
        result = await run_in_threadpool(
            service.record_feedback,
            parse_message_id(body.message_id),
            rating=body.rating,
            reason=body.reason,
            comment=body.comment,
            correction=body.correction,
            tags=body.tags,
            score=body.score,
            actor="api",
            rater=f"api:{body.user}" if body.user else None,
        )
        return result

    return router
