"""The chat and feedback flows shared by the Gradio UI and the HTTP API, so
both store conversations and create examples through the same code path."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.contracts import AnswerStream, ChatEngine
from bot.serving.embedder import shared_embedder
from bot.serving.retrieval import (
    WARM_EXAMPLES,
    ApprovedAnswer,
    Consultation,
    RelatedAnswer,
    answer_tokens,
    consult,
    question_of,
    shown,
    single_question,
)
from core.config import ServeConfig
from core.errors import NotFoundError, StorageFullError, TooLargeError, ValidationError
from storage import Store
from storage.examples import normalise_text, validate_messages
from storage.vocabulary import BASE_VERSION, ExampleStatus, Role

log = logging.getLogger(__name__)

# Said with an answer that a full disk kept out of the store (Answer.stored is False).
NOT_STORED = "This answer could not be stored (storage is full), so it cannot be rated or corrected."


def clean_conversation(messages: Any, *, max_chars: int = 64_000, max_turns: int = 200) -> list[dict[str, str]]:
    """Validate a conversation from a client: roles, string contents, ends with a user turn, and
    its size within the server's caps (TooLargeError, a 413, beyond them: checked before any
    tokenizing, which is where a long conversation costs CPU)."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError("messages must be a non-empty list")
    if len(messages) > max_turns:
        raise TooLargeError(
            f"the conversation has {len(messages)} messages; this server takes at most {max_turns} "
            "(start a new conversation)"
        )
    total = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))
    if total > max_chars:
        raise TooLargeError(
            f"the conversation is {total} characters long; this server takes at most {max_chars} "
            "(start a new conversation, or send a shorter message)"
        )
    return validate_messages(messages, what="messages")


@dataclass
class Answer:
    """An answer being streamed. Its assistant row is stored when it starts, so
    `message_id` is known before the first piece (an API stream's chunks carry it);
    the text is filled in when iteration ends, or the row removed if generation fails.

    When storage is full the person is still answered: `message_id` is then None (the answer
    is not stored, so nothing can rate it), and `notices` says so."""

    generation: AnswerStream
    conversation_id: int | None
    context: list[dict[str, str]]
    store: Store
    message_id: int | None
    few_shot_examples: list[dict[str, Any]] = field(default_factory=list)
    # Approved examples shown as related, not as the answer (RelatedAnswer): the question has none yet.
    related: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.generation.text

    @property
    def model_version(self) -> str | None:
        return self.generation.model_version

    @property
    def few_shot_ids(self) -> list[int]:
        return self.generation.few_shot_ids

    @property
    def from_example(self) -> int | None:
        """The id of the approved example whose answer this is, word for word; None for the model's own answer."""
        return self.generation.from_example

    @property
    def stored(self) -> bool:
        """Whether the answer is in the store (False when storage was full)."""
        return self.message_id is not None

    @property
    def notices(self) -> list[str]:
        return [*self.generation.prompt.notices, *([] if self.stored else [NOT_STORED])]

    def __iter__(self) -> Iterator[str]:
        failed = False
        try:
            yield from self.generation
        except Exception:
            failed = True
            raise
        finally:
            # Reached too when the consumer stops early: keep the text it was shown.
            if self.message_id is not None:
                self._store_text(self.message_id, failed)

    def _store_text(self, message_id: int, failed: bool) -> None:
        try:
            if not (failed and self.store.delete_message(message_id)):
                fields: dict[str, Any] = {"content": self.generation.text.strip()}
                if self.generation.model_version is not None:
                    fields["model_version"] = self.generation.model_version
                self.store.update_message(message_id, **fields)
        except StorageFullError as exc:
            # The person has their answer; its row would say an empty one, so it goes (unless rated already).
            log.warning("Answer %d was given but its text could not be stored: %s", message_id, exc)
            try:
                if self.store.delete_message(message_id):
                    self.message_id = None
            except StorageFullError:
                log.warning("Answer %d is stored without its text: storage is full", message_id)

    def cancel(self) -> None:
        self.generation.cancel()


@dataclass
class TriedAnswer:
    """One of the answers of "try it on both": the version that wrote it and whether it is the one serving."""

    version: str
    serving: bool
    text: str

    @property
    def label(self) -> str:
        return f"{self.version} ({'serving now' if self.serving else 'chosen version'})"


class ChatService:
    """Answers conversations and turns ratings and corrections into examples."""

    def __init__(self, engine: ChatEngine, store: Store, config: ServeConfig):
        self.engine = engine
        self.store = store
        self.config = config
        # Sentence vectors rank the approved examples; one model per process (shared_embedder).
        self.embedder = shared_embedder(config.embedder)

    def warm_few_shot(self) -> int:
        """Compute the question vectors the first chats would otherwise wait for: those of the newest
        approved examples' questions (about 2 ms each in batches on 2 cores). Returns how many."""
        examples = self.store.list_examples(status=ExampleStatus.APPROVED, limit=WARM_EXAMPLES)
        return self.embedder.warm([question_of(e) for e in examples])

    def consult(self, context: Sequence[dict[str, str]]) -> Consultation:
        """What the approved examples say about the conversation's latest question (bot/serving/retrieval.py)."""
        return consult(
            self.store, context, self.embedder, k=self.config.few_shot_k,
            min_similarity=self.config.few_shot_min_similarity,
            related_similarity=self.config.few_shot_related_similarity,
        )

    def approved_answer(self, found: Consultation, params: GenerationParams) -> dict[str, Any] | None:
        """The approved example to answer with word for word (few_shot_direct), or None to let the model answer.

        Only an example of a single question (its answer stands on its own), and only when the answer fits
        the requested length and holds none of its stop strings."""
        example = found.answer
        if not self.config.few_shot_direct or example is None or not single_question(example):
            return None
        if any(s in example["output"] for s in params.stop):
            return None
        if answer_tokens(example["output"], self.engine.tokenizer) > params.max_new_tokens:
            return None
        return example

    def reply_plan(
        self, context: Sequence[dict[str, str]], params: GenerationParams, few_shot: bool
    ) -> tuple[dict[str, Any] | None, Consultation | None, list[dict[str, Any]]]:
        """How to answer: (an approved answer to serve, or an honest reply's consultation, or neither),
        and the demonstrations for the model otherwise.

        A conversation with a system prompt is always answered by the model (an approved answer and the
        honest reply know nothing of that prompt), with the examples that answer its question as
        demonstrations; so is any conversation when few-shot is off, with none."""
        if not few_shot:
            return None, None, []
        found = self.consult(context)
        demos = [dict(e, form=self.config.few_shot_form) for e in found.answering]
        if any(m["role"] == "system" for m in context):
            return None, None, demos
        direct = self.approved_answer(found, params)
        if direct is not None:
            return direct, None, [direct]
        if not found.answering and (found.related or found.unknown and self.config.grounded):
            return None, found, []
        return None, None, demos

    def try_versions(self, prompt: str, version: str | None = None) -> list[TriedAnswer]:
        """"Try it on both": one prompt answered by `version` (default: the newest other than the one
        serving) and by the version serving now, with few-shot off and greedy decoding, so the two
        differ only by their weights. Nothing is stored and no user is answered by `version`."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValidationError("Type a prompt to try on both versions")
        messages = clean_conversation([{"role": Role.USER, "content": prompt.strip()}])
        serving = self.engine.version
        if not version:
            others = [r["version"] for r in reversed(self.store.list_model_versions()) if r["version"] != serving]
            if not others:
                raise ValidationError("There is no trained version besides the one serving: train one first")
            version = others[0]
        if version == serving:
            raise ValidationError(f"{version} is the version serving now: choose another version to try beside it")
        # An unknown version is a NotFoundError (404) here, before any model work.
        path = None if version == BASE_VERSION else self.config.paths.resolve(self.store.get_model_version(version)["path"])
        params = GenerationParams(max_new_tokens=self.config.max_new_tokens)
        chosen = self.engine.answer_with(version, path, messages, params)
        current = self.engine.stream(messages, params)
        for _ in current:
            pass
        return [
            TriedAnswer(version, False, chosen),
            TriedAnswer(current.model_version or serving, True, current.text),
        ]

    def default_params(self) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=self.config.max_new_tokens, temperature=self.config.temperature, top_p=self.config.top_p
        )

    def answer(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        params: GenerationParams | None = None,
        few_shot: bool | None = None,
        conversation_id: int | None = None,
        source: str = "ui",
        keep: bool = True,
    ) -> Answer:
        """Store the user's turn and start answering it; iterate the result to stream the answer.
        `keep=False` answers without storing anything: a front end's own chores (a chat's title, its
        tags), which nobody rates and which would only crowd the store."""
        context = clean_conversation(
            list(messages),
            max_chars=self.config.max_conversation_chars,
            max_turns=self.config.max_conversation_turns,
        )
        params = (params or self.default_params()).validate()
        use_few_shot = self.config.few_shot if few_shot is None else few_shot
        direct, honest, demos = self.reply_plan(context, params, use_few_shot)
        # The rows are written first, so a failed write starts no decode that nobody would cancel.
        # A full disk is the exception: the person is still answered, and nothing is stored.
        new_conversation = conversation_id is None
        stored: list[int] = []  # the turn's rows: the user's, then the answer's
        try:
            if keep and conversation_id is None:
                system = next((m["content"] for m in context if m["role"] == "system"), None)
                conversation_id = self.store.create_conversation(source=source, system_prompt=system)
            if keep and conversation_id is not None:
                stored.append(self.store.add_message(conversation_id, Role.USER, context[-1]["content"]))
                stored.append(self.store.add_message(
                    conversation_id, Role.ASSISTANT, "", context=context, model_version=self.engine.version,
                    gen_params=params.as_dict(),
                ))
        except StorageFullError as exc:
            log.warning("Answering without storing the turn: %s", exc)
            conversation_id, stored = self._forget_turn(stored, conversation_id, new_conversation), []
        message_id = stored[-1] if stored else None
        generation: AnswerStream
        try:
            if direct:
                tokens = answer_tokens(direct["output"], self.engine.tokenizer)
                generation = ApprovedAnswer(direct, params, model_version=self.engine.version, completion_tokens=tokens)
            elif honest:
                generation = RelatedAnswer(honest, params, model_version=self.engine.version, tokenizer=self.engine.tokenizer)
            else:
                generation = self.engine.stream(context, params, demos)
        except BaseException:  # refused (e.g. the prompt does not fit): leave no trace of the turn
            if stored:
                self.store.discard_turn(stored[::-1], conversation_id=conversation_id if new_conversation else None)
            raise
        related = shown(honest) if honest else []
        try:  # which demonstrations fit is known once the prompt is built; the kind of answer, for its badge
            if message_id is not None:
                self.store.update_message(
                    message_id, few_shot_ids=generation.few_shot_ids, from_example=generation.from_example,
                    related_ids=[e["id"] for e in related] or None,
                )
        except StorageFullError as exc:
            log.warning("Answering without storing the turn: %s", exc)
            conversation_id, message_id = self._forget_turn(stored, conversation_id, new_conversation), None
        except BaseException:
            generation.cancel()
            raise
        return Answer(
            generation, conversation_id, context, self.store, message_id, few_shot_examples=demos, related=related
        )

    def _forget_turn(self, message_ids: list[int], conversation_id: int | None, new_conversation: bool) -> int | None:
        """Remove what a full disk let through of a turn, so that no row holds half of it; return
        the conversation id the answer goes with (None for a conversation that was to be new)."""
        try:
            self.store.discard_turn(message_ids, conversation_id=conversation_id if new_conversation else None)
        except StorageFullError:
            log.warning("Could not remove a partly stored turn: storage is full")
        return None if new_conversation else conversation_id

    def review_status(self) -> str:
        """The status a new example gets under the review policy."""
        return ExampleStatus.APPROVED if self.config.effective_review_policy == "auto" else ExampleStatus.PENDING

    def record_feedback(
        self,
        message_id: Any,
        *,
        rating: Any = None,
        reason: Any = None,
        comment: Any = None,
        correction: Any = None,
        actor: str,
        rater: str | None = None,
        tags: Any = None,
        score: Any = None,
    ) -> dict[str, Any]:
        """Store a rating and/or correction of an assistant message, creating an example where due.

        A correction becomes a `correction` example (the original kept as rejected),
        a thumbs-up an `upvote` example, a thumbs-down alone feedback only. Un-rating
        (rating None) or a thumbs-down withdraws an earlier upvote example, unless an
        admin set its status. `actor` is an `Actor` (`ui`, `api`). The whole change is
        one transaction in the store (Store.record_feedback). `tags` (short texts) and `score`
        (1 to 10) say more about a rating, as `reason` and `comment` do.
        """
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            raise ValidationError("message_id must be an integer")
        if rating not in (None, "up", "down"):
            raise ValidationError(f"rating must be 'up', 'down' or null, not {rating!r}")
        for name, value in (("reason", reason), ("comment", comment)):
            if value is not None and (not isinstance(value, str) or len(value) > 2000):
                raise ValidationError(f"{name} must be a string of at most 2000 characters")
        if correction is not None and (not isinstance(correction, str) or not normalise_text(correction)):
            raise ValidationError("correction is empty: give the text the answer should have been")
        return self.store.record_feedback(
            message_id,
            rating=rating,
            reason=reason,
            comment=comment,
            correction=correction,
            status=self.review_status(),
            actor=actor,
            rater=rater,
            tags=tags,
            score=score,
        )

    def answer_sources(self, message_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """How each answer was made and whether it was corrected (what the chat's badges show)."""
        return self.store.answer_sources(message_ids)

    def learned_examples(self, version: str | None, example_ids: Sequence[int]) -> set[int]:
        """Which of `example_ids` the trained `version` answers with few-shot off, as judged when it was
        trained (its "did it learn this?" report); none for the base model or an unknown version."""
        if not version or version == BASE_VERSION or not example_ids:
            return set()
        try:
            items = (self.store.get_model_version(version).get("metrics") or {}).get("items") or []
        except NotFoundError:
            return set()
        wanted = set(example_ids)
        return {i["example_id"] for i in items if i.get("example_id") in wanted and i.get("candidate_learned")}

    def current_ratings(self, message_ids: Sequence[int], *, rater: str | None) -> dict[int, dict[str, Any]]:
        """Each answer's current rating by one rater (what the chat's thumbs show)."""
        return self.store.current_ratings(message_ids, rater)
