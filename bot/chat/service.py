"""The chat and feedback flows shared by the Gradio UI and the HTTP API, so
both store conversations and create examples through the same code path."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.contracts import AnswerStream, ChatEngine
from bot.serving.retrieval import (
    WARM_EXAMPLES,
    ApprovedAnswer,
    QuestionEmbedder,
    answer_tokens,
    approved_answer_for,
    question_of,
    retrieve,
    single_question,
)
from core.config import ServeConfig
from core.errors import TooLargeError, ValidationError
from storage import Store
from storage.examples import normalise_text, validate_messages
from storage.vocabulary import ExampleStatus, Role


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
    the text is filled in when iteration ends, or the row removed if generation fails."""

    generation: AnswerStream
    conversation_id: int
    context: list[dict[str, str]]
    store: Store
    message_id: int
    few_shot_examples: list[dict[str, Any]] = field(default_factory=list)

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
    def notices(self) -> list[str]:
        return self.generation.prompt.notices

    def __iter__(self) -> Iterator[str]:
        failed = False
        try:
            yield from self.generation
        except Exception:
            failed = True
            raise
        finally:
            # Reached too when the consumer stops early: keep the text it was shown.
            if not (failed and self.store.delete_message(self.message_id)):
                fields: dict[str, Any] = {"content": self.generation.text.strip()}
                if self.generation.model_version is not None:
                    fields["model_version"] = self.generation.model_version
                self.store.update_message(self.message_id, **fields)

    def cancel(self) -> None:
        self.generation.cancel()


class ChatService:
    """Answers conversations and turns ratings and corrections into examples."""

    def __init__(self, engine: ChatEngine, store: Store, config: ServeConfig):
        self.engine = engine
        self.store = store
        self.config = config
        # Question vectors come from the plain base weights, whichever version the engine serves.
        wants_embedder = config.few_shot_rerank or config.few_shot_direct
        self.embedder = QuestionEmbedder.for_engine(engine) if wants_embedder else None
        self.rerank = self.embedder if config.few_shot_rerank else None

    def warm_few_shot(self) -> int:
        """Compute the question vectors the first chats would otherwise wait for: the shared ones
        (44 questions, about 2 s on 2 cores) and those of the newest approved examples' questions.
        Returns how many example questions were embedded."""
        if self.embedder is None:
            return 0
        examples = self.store.list_examples(status=ExampleStatus.APPROVED, limit=WARM_EXAMPLES)
        return self.embedder.warm([question_of(e) for e in examples if single_question(e)])

    def approved_answer(self, context: Sequence[dict[str, str]], params: GenerationParams) -> dict[str, Any] | None:
        """The approved example to answer with word for word (few_shot_direct), or None to let the model answer.

        Only for a conversation without a system prompt (an approved answer knows nothing of one), and
        only when the answer fits the requested length and holds none of its stop strings."""
        if not self.config.few_shot_direct or self.embedder is None:
            return None
        if any(m["role"] == "system" for m in context):
            return None
        example = approved_answer_for(
            self.store, context, self.embedder,
            min_similarity=self.config.few_shot_direct_min_similarity,
            min_margin=self.config.few_shot_direct_min_margin,
        )
        if example is None or any(s in example["output"] for s in params.stop):
            return None
        if answer_tokens(example["output"], self.engine.tokenizer) > params.max_new_tokens:
            return None
        return example

    def demonstrations(self, context: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        """The approved examples to show the model for the conversation's latest question."""
        demos = retrieve(
            self.store, context, k=self.config.few_shot_k, embedder=self.rerank,
            min_similarity=self.config.few_shot_min_similarity, min_margin=self.config.few_shot_min_margin,
        )
        for demo in demos:
            demo["form"] = self.config.few_shot_form
        return demos

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
    ) -> Answer:
        """Store the user's turn and start answering it; iterate the result to stream the answer."""
        context = clean_conversation(
            list(messages),
            max_chars=self.config.max_conversation_chars,
            max_turns=self.config.max_conversation_turns,
        )
        params = (params or self.default_params()).validate()
        use_few_shot = self.config.few_shot if few_shot is None else few_shot
        direct = self.approved_answer(context, params) if use_few_shot else None
        demos = [direct] if direct else self.demonstrations(context) if use_few_shot else []
        # The rows are written first, so a failed write starts no decode that nobody would cancel.
        new_conversation = conversation_id is None
        if conversation_id is None:
            system = next((m["content"] for m in context if m["role"] == "system"), None)
            conversation_id = self.store.create_conversation(source=source, system_prompt=system)
        user_id = self.store.add_message(conversation_id, Role.USER, context[-1]["content"])
        message_id = self.store.add_message(
            conversation_id, Role.ASSISTANT, "", context=context, model_version=self.engine.version,
            gen_params=params.as_dict(),
        )
        generation: AnswerStream
        try:
            if direct:
                tokens = answer_tokens(direct["output"], self.engine.tokenizer)
                generation = ApprovedAnswer(direct, params, model_version=self.engine.version, completion_tokens=tokens)
            else:
                generation = self.engine.stream(context, params, demos)
        except BaseException:  # refused (e.g. the prompt does not fit): leave no trace of the turn
            self.store.discard_turn([message_id, user_id], conversation_id=conversation_id if new_conversation else None)
            raise
        try:  # which demonstrations fit is known once the prompt is built
            self.store.update_message(message_id, few_shot_ids=generation.few_shot_ids)
        except BaseException:
            generation.cancel()
            raise
        return Answer(generation, conversation_id, context, self.store, message_id, few_shot_examples=demos)

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
    ) -> dict[str, Any]:
        """Store a rating and/or correction of an assistant message, creating an example where due.

        A correction becomes a `correction` example (the original kept as rejected),
        a thumbs-up an `upvote` example, a thumbs-down alone feedback only. Un-rating
        (rating None) or a thumbs-down withdraws an earlier upvote example, unless an
        admin set its status. `actor` is an `Actor` (`ui`, `api`). The whole change is
        one transaction in the store (Store.record_feedback).
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
        )

    def current_ratings(self, message_ids: Sequence[int], *, rater: str | None) -> dict[int, dict[str, Any]]:
        """Each answer's current rating by one rater (what the chat's thumbs show)."""
        return self.store.current_ratings(message_ids, rater)
