"""Routes for a front end with a chat store of its own: Open WebUI (integrations/openwebui/).

Open WebUI names each answer and rating with its own ids. Its connection sends the answer's id in
a header with each chat completion (`X-OpenWebUI-Message-Id`, read by bot/api/chat.py), and the
store links it to the answer stored here. Its functions then forward, by those ids:
- each rating made there (PUT, idempotent per Open WebUI rating id; DELETE when it is deleted there);
- a list of every rating's id and time (sync), so that what was missed while either side was down
  is sent again and what was deleted there is withdrawn here;
- a correction typed there (the answer it replaces is kept as the rejected one);
- and they ask for the line to show under an answer (which version, which examples, what was learned).

Every route needs the integration token (ServeConfig.integration_token) or the admin password: the
routes speak for any of that front end's users, which no anonymous client may do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, Strict

from bot.api.auth import admin_dependency
from bot.api.responses import error_responses
from bot.auth import AdminGuard
from bot.chat.service import ChatService
from core.errors import NotFoundError
from storage.text import MAX_SCORE, MAX_TAGS, TAG_CHARS
from storage.vocabulary import BASE_VERSION, Actor, ExampleStatus, Rating

SOURCE = "openwebui"
# The headers Open WebUI's connection is set up to send (integrations/openwebui/connect.py).
MESSAGE_HEADER, CHAT_HEADER, USER_HEADER, TASK_HEADER = (
    "x-openwebui-message-id", "x-openwebui-chat-id", "x-openwebui-user-id", "x-openwebui-task",
)
MAX_EXTERNAL_ID = 200
# Open WebUI's reasons for a thumbs-down, in the words of this server's own rating panel where they mean
# the same (storage.vocabulary.DISLIKE_REASONS), so that the Admin tab's filter groups them.
REASONS = {"not_factually_correct": "Wrong fact", "not_helpful": "Unhelpful", "too_verbose": "Too long"}

ExternalId = Annotated[str, Field(min_length=1, max_length=MAX_EXTERNAL_ID, pattern=r"^[A-Za-z0-9_.:@-]+$")]
PathId = Annotated[str, Path(min_length=1, max_length=MAX_EXTERNAL_ID, pattern=r"^[A-Za-z0-9_.:@-]+$")]


def header_id(value: str | None) -> str | None:
    """An id from a header, or None when it is absent, empty, or not an id (a header is never refused:
    the chat is answered either way; only the link to the front end's message is left out)."""
    value = (value or "").strip()
    if not value or len(value) > MAX_EXTERNAL_ID or not all(c.isalnum() or c in "_.:@-" for c in value):
        return None
    return value


def rater_of(user_id: str) -> str:
    return f"{SOURCE}:{user_id}"


class LinkedRating(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "message_id": "1977c5ce-c853-4b88-8edd-a697f3140410", "user_id": "61c6432d-0d5e-4d83-9a3e-5f0e1c7f2b11",
        "rating": -1, "reason": "not_factually_correct", "comment": "Paris is right but too vague",
        "tags": ["geography"], "score": 3, "updated_at": 1796616968}]})

    message_id: ExternalId = Field(description="Open WebUI's id of the rated answer (its feedback's meta.message_id).")
    chat_id: ExternalId | None = None
    user_id: ExternalId = Field(description="Open WebUI's id of the person who rated: the rater here.")
    user_name: str | None = Field(None, max_length=200)
    rating: Literal[1, -1, 0] | None = Field(description="1 up, -1 down; 0 or null: no thumb (withdrawn).")
    reason: str | None = Field(None, max_length=200, description="Open WebUI's reason, e.g. not_factually_correct.")
    comment: str | None = Field(None, max_length=2000)
    tags: list[Annotated[str, Field(max_length=1000)]] | None = Field(
        None, max_length=100,
        description=f"Kept to the first {MAX_TAGS}, each cut to {TAG_CHARS} characters: Open WebUI makes some itself.",
    )
    score: Annotated[int, Strict(), Field(ge=1, le=MAX_SCORE)] | None = Field(
        None, description="Open WebUI's 1–10 rating (its feedback's data.details.rating)."
    )
    updated_at: Annotated[int, Strict(), Field(ge=0, le=2**62)] = Field(
        description="The rating's updated_at in Open WebUI (unix seconds): an older one than stored changes nothing."
    )

    def stored_reason(self) -> str | None:
        if not self.reason:
            return None
        return REASONS.get(self.reason, self.reason.replace("_", " ").strip().capitalize() or None)

    def stored_tags(self) -> list[str] | None:
        tags: list[str] = []
        for tag in self.tags or []:
            tag = " ".join(tag.split())[:TAG_CHARS].strip()
            if tag and tag not in tags:
                tags.append(tag)
        return tags[:MAX_TAGS] or None


class LinkedRatingResult(BaseModel):
    feedback_id: int | None
    example_id: int | None
    status: str | None
    message_id: int = Field(description="The answer's message id here.")
    unchanged: bool = Field(False, description="True when this rating was already stored (sent again, or late).")


class RatingTimes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ExternalId
    updated_at: Annotated[int, Strict(), Field(ge=0, le=2**62)]


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feedback: list[RatingTimes] = Field(
        max_length=1_000_000,
        description="Every rating of the Exemplar model that Open WebUI holds now, with its updated_at. A rating "
        "stored here from Open WebUI and missing from the list was deleted there: it is withdrawn here.",
    )


class SyncResult(BaseModel):
    wanted: list[str] = Field(description="Ratings to send (PUT): new here, or changed since they were stored.")
    withdrawn: list[str] = Field(description="Ratings withdrawn here because the list no longer holds them.")


class LinkedCorrection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: ExternalId = Field(description="Open WebUI's id of the answer being corrected.")
    chat_id: ExternalId | None = None
    user_id: ExternalId
    user_name: str | None = Field(None, max_length=200)
    correction: str = Field(min_length=1, max_length=20_000, description="The text the answer should have been.")


class LinkedCorrectionResult(BaseModel):
    example_id: int
    status: str
    message_id: int
    note: str = Field(description="What happens next, in a sentence to show the person who corrected.")


class AnswerNote(BaseModel):
    message_id: int
    model_version: str | None
    few_shot_ids: list[int]
    from_example: int | None
    related_ids: list[int]
    learned: dict[str, str] = Field(description="Example id → the version that answered and had learned it.")
    corrected: bool = Field(description="Whether this answer was corrected here since.")
    note: str = Field(description="One line to show under the answer.")


def _examples(ids: list[int]) -> str:
    marks = [f"#{i}" for i in ids]
    return f"example{'s' if len(ids) != 1 else ''} {', '.join(marks)}"


def answer_note(source: dict[str, Any], learned: dict[int, str]) -> str:
    """The line under an answer in Open WebUI: which version wrote it and how (the words of this
    server's own chat, bot/ui/chat_tab.py describe), and which of its examples that version learned."""
    version = source.get("model_version") or "base"
    few_shot = list(source.get("few_shot_ids") or [])
    related = list(source.get("related_ids") or [])
    parts = [f"Exemplar {version}"]
    if source.get("from_example") is not None:
        parts.append(f"stated from example #{source['from_example']}, word for word")
    elif related:
        parts.append(f"no example answers this question yet; {_examples(related)} shown as related")
    elif few_shot:
        parts.append(f"guided by {_examples(few_shot)}")
    if learned:
        parts.append(f"{_examples(sorted(learned))} learned by {version}")
    if source.get("correction"):
        parts.append("corrected since")
    return " · ".join(parts)


def correction_note(example_id: int, status: str) -> str:
    if status == ExampleStatus.APPROVED:
        return (f"Learned as example #{example_id}: the next answer to this question follows it at once, "
                "and the next retrain teaches it to the model.")
    return (f"Saved as example #{example_id}, waiting for an admin's review: once approved, the next answer "
            "follows it and the next retrain teaches it to the model.")


def openwebui_router(service: ChatService, guard: AdminGuard) -> APIRouter:
    """The routes above, behind `guard` (the integration token or the admin password)."""
    router = APIRouter(
        prefix="/api/openwebui",
        tags=["open webui"],
        dependencies=[Depends(admin_dependency(guard))],
        responses=error_responses(400, 401, 429),
    )
    store = service.store

    @router.put("/feedback/{feedback_id}", response_model=LinkedRatingResult,
                responses=error_responses(404, 413, 422, 507))
    async def put_rating(feedback_id: PathId, body: LinkedRating) -> Any:
        """Store (or change) a rating made in Open WebUI, by its id there; 404 when the rated answer is
        not one of this server's (another model's, or stored while storage was full)."""
        rating = {1: Rating.UP, -1: Rating.DOWN}.get(body.rating or 0)
        return await run_in_threadpool(
            store.record_linked_feedback, SOURCE, feedback_id, body.message_id, updated_at=body.updated_at,
            rater=rater_of(body.user_id), status=service.review_status(), rating=rating,
            reason=body.stored_reason() if rating else None, comment=body.comment, tags=body.stored_tags(),
            score=body.score,
        )

    @router.delete("/feedback/{feedback_id}", responses=error_responses(413, 422, 507))
    async def delete_rating(feedback_id: PathId) -> dict[str, bool]:
        """Withdraw a rating that was deleted in Open WebUI; `withdrawn` is false when none was stored."""
        withdrawn = await run_in_threadpool(
            store.withdraw_linked_feedback, SOURCE, feedback_id, status=service.review_status()
        )
        return {"withdrawn": withdrawn}

    @router.post("/feedback/sync", response_model=SyncResult, responses=error_responses(413, 422, 507))
    async def sync(body: SyncRequest) -> Any:
        """Compare Open WebUI's ratings with those stored here: say which to send, withdraw the deleted."""
        def work() -> dict[str, list[str]]:
            known = store.linked_feedback_times(SOURCE)
            listed = {r.id: r.updated_at for r in body.feedback}
            wanted = [i for i, at in listed.items() if i not in known or (known[i] or 0) < at]
            withdrawn = [
                i for i in known
                if i not in listed and store.withdraw_linked_feedback(SOURCE, i, status=service.review_status())
            ]
            return {"wanted": wanted, "withdrawn": withdrawn}

        return await run_in_threadpool(work)

    @router.post("/corrections", status_code=201, response_model=LinkedCorrectionResult,
                 responses=error_responses(404, 413, 422, 507))
    async def correct(body: LinkedCorrection) -> Any:
        """A correction typed in Open WebUI: a `correction` example with the answer kept as rejected."""
        def work() -> dict[str, Any]:
            message_id = store.linked_message(SOURCE, body.message_id)
            if message_id is None:
                raise NotFoundError(
                    f"No answer stored here has the Open WebUI message id {body.message_id!r}: only answers of the "
                    "Exemplar model, given while the connection sends the message id header, can be corrected"
                )
            result = service.record_feedback(
                message_id, correction=body.correction, actor=Actor.API, rater=rater_of(body.user_id)
            )
            return {**result, "message_id": message_id,
                    "note": correction_note(result["example_id"], result["status"])}

        return await run_in_threadpool(work)

    @router.get("/messages/{message_id}", response_model=AnswerNote, responses=error_responses(404, 422))
    async def note(message_id: PathId) -> Any:
        """How the answer Open WebUI calls `message_id` was made, as one line to show under it."""
        def work() -> dict[str, Any]:
            stored_id = store.linked_message(SOURCE, message_id)
            source = service.answer_sources([stored_id]).get(stored_id) if stored_id is not None else None
            if stored_id is None or source is None:
                raise NotFoundError(f"No answer stored here has the Open WebUI message id {message_id!r}")
            version = source.get("model_version") or BASE_VERSION
            examples = [*(source.get("few_shot_ids") or [])]
            if source.get("from_example") is not None:
                examples.append(source["from_example"])
            learned = {i: version for i in service.learned_examples(version, examples)}
            return {
                "message_id": stored_id,
                "model_version": source.get("model_version"),
                "few_shot_ids": source.get("few_shot_ids") or [],
                "from_example": source.get("from_example"),
                "related_ids": source.get("related_ids") or [],
                "learned": {str(k): v for k, v in learned.items()},
                "corrected": bool(source.get("correction")),
                "note": answer_note(source, learned),
            }

        return await run_in_threadpool(work)

    return router
