"""Retrieval: which approved examples bear on the user's latest question, and how.

Three outcomes (consult() returns a Consultation):

- **answered**: an approved example asks what the question asks. Its answer can be served word for
  word (ApprovedAnswer; ServeConfig.few_shot_direct), or put into the prompt as a demonstration.
- **related**: examples close to the question that do not answer it: a minimal pair ("adult fare"
  against a stored "child fare"), or a rewording retrieval is not sure of. They are never asserted:
  the bot says it has no answer yet and shows them as related (RelatedAnswer), and the user can
  correct that reply, which makes the near miss the next correction.
- **unknown**: the question names something the approved examples speak of ("Harbrook Ferries"),
  and none of them answers it (ServeConfig.grounded): the bot says it does not know that yet
  rather than letting the model invent an answer about it.

Candidates come from storage/search.py's word score (FTS5 recall; it leaves unrelated questions
out). A sentence-embedding model (bot/serving/embedder.py) ranks them by what the questions mean,
and bot/serving/coverage.py decides whether the best one answers: a minimal pair is as similar as
a paraphrase by any vector, so the words that differ are looked at. benchmarks/bench_grounding.py
measures all of it; docs/few-shot.md has the tables. Prompts are built by core/prompts.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.coverage import coverage
from bot.serving.embedder import SentenceEmbedder
from core.prompts import FittedPrompt
from storage import Store
from storage.search import content_words, name_words

# Candidates the word score hands to the ranking by meaning: enough to hold every correction about
# a few entities. Any shared content word makes a candidate (min_score 0): the ranking and the
# coverage decide, and a rewording may share only the entity's name with its question.
RECALL = 20
# A message longer than this is no single question: nothing is asserted or shown as related for
# it, and it gets no demonstrations (its words would match many examples loosely).
DIRECT_MAX_QUESTION_WORDS = 40
# Related answers shown at most.
RELATED_K = 2
# At start, the server embeds the question of up to this many approved examples (newest first) in
# the background, so the first chats that retrieve them do not wait for their vectors.
WARM_EXAMPLES = 500

_QUESTION_START = re.compile(
    r"^\s*(who|whom|whose|what|whats|what's|which|when|where|why|how|is|are|am|was|were|do|does|did|can|could|"
    r"will|would|should|shall|may|might|must|has|have|had)\b",
    re.IGNORECASE,
)


def is_question(text: str) -> bool:
    """Whether `text` asks something (a '?' or a question word first), rather than asks for a text to be written."""
    return "?" in text or bool(_QUESTION_START.match(text))


@dataclass
class Consultation:
    """What the approved examples say about the latest question (see the module doc)."""

    question: str
    answer: dict[str, Any] | None = None  # the example that answers it, best first among `answering`
    answering: list[dict[str, Any]] = field(default_factory=list)  # examples that answer it (demonstrations)
    related: list[dict[str, Any]] = field(default_factory=list)  # close examples that do not answer it
    unknown: bool = False  # it asks about something the examples name, and none answers it
    entity: list[str] = field(default_factory=list)  # the names it shares with the examples
    about: list[dict[str, Any]] = field(default_factory=list)  # the closest examples about those names


def consult(
    store: Store,
    messages: Sequence[dict[str, str]],
    embedder: SentenceEmbedder,
    *,
    k: int = 3,
    min_similarity: float = 0.6,
    related_similarity: float = 0.45,
    recall: int = RECALL,
) -> Consultation:
    """Rank the approved examples for the latest question and judge them (see the module doc).

    An example answers when its question is at least `min_similarity` from the question (cosine of
    sentence vectors) and covers the question's words (bot/serving/coverage.py); every example that
    does, up to `k`, is in `answering`, and the first is the `answer` unless two that answer give
    different answers (then neither is asserted: both are related). Examples at least
    `related_similarity` from it that do not answer are `related`. Each candidate gets a
    `similarity`.
    """
    found = Consultation(question=latest_question(messages))
    question = found.question
    if k <= 0 or not question.strip() or len(question.split()) > DIRECT_MAX_QUESTION_WORDS:
        return found
    candidates = store.search_examples(question, limit=recall, min_score=0.0)
    if not candidates:
        return found
    vectors = embedder.vectors([question] + [question_of(e) for e in candidates])
    for example, similarity in zip(candidates, (vectors[1:] @ vectors[0]).tolist(), strict=True):
        example["similarity"] = similarity
    ranked = sorted(candidates, key=lambda e: -e["similarity"])  # stable: the word score breaks ties
    # Coverage looks at words one by one: only the close candidates, and only until enough answer
    # (two at least, to see whether the best two disagree).
    for example in ranked:
        if example["similarity"] < min_similarity or len(found.answering) >= max(k, 2):
            break
        if coverage(question, question_of(example), example["output"], embedder).covered:
            found.answering.append(example)
    if found.answering:
        best = found.answering[0]
        rival = next((e for e in found.answering[1:] if _same_text(e["output"]) != _same_text(best["output"])), None)
        if rival is not None and rival["similarity"] > best["similarity"] - 0.05:
            found.answering = []  # two stored answers disagree about it: show them, state neither
    found.answering = found.answering[:k]
    found.answer = found.answering[0] if found.answering else None
    if found.answer is None:
        found.related = [e for e in ranked if e["similarity"] >= related_similarity][:RELATED_K]
        names = set(content_words(" ".join(name_words(question))))
        about = [e for e in ranked if names and names <= set(content_words(question_of(e)))]
        if about and is_question(question):
            found.unknown = True
            found.entity = name_words(question)
            found.about = about[:RELATED_K]
    return found


def _same_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def latest_question(messages: Sequence[dict[str, str]]) -> str:
    """The text of the last user message ('' if there is none)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def question_of(example: dict[str, Any]) -> str:
    """An example's question: the last user turn of its input."""
    return latest_question(example["input"])


def single_question(example: dict[str, Any]) -> bool:
    """An example whose input is one user question and nothing else: its answer stands on its own."""
    return len(example["input"]) == 1 and example["input"][0]["role"] == "user"


def answer_tokens(text: str, tokenizer: Any = None) -> int:
    """How many tokens `text` takes (its words, a lower bound, for an engine without a tokenizer)."""
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text.strip(), add_special_tokens=False)["input_ids"])


class ApprovedAnswer:
    """An approved example's answer served as the answer (the AnswerStream contract), with no decoding.

    `few_shot_ids` names the example, as for a demonstration, and `from_example` says the text is
    that approved answer word for word rather than the model's.
    """

    finish_reason = "stop"

    def __init__(
        self, example: dict[str, Any], params: GenerationParams, *, model_version: str | None, completion_tokens: int = 0
    ):
        self.example = example
        self.params = params
        self.model_version = model_version
        self.from_example: int | None = example["id"]
        self.prompt = FittedPrompt(text="", token_ids=[], messages=[], demonstrations=[example])
        self.text = ""
        self._answer = example["output"].strip()
        self.completion_tokens = completion_tokens

    @property
    def prompt_tokens(self) -> int:
        return 0

    @property
    def few_shot_ids(self) -> list[int]:
        return [self.example["id"]]


    def cancel(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        self.text = self._answer
        yield self._answer


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def honest_reply(found: Consultation) -> str:
    """What the bot says when it has no approved answer to the question: that it has none, the
    related answers it was given (each with the question it was given for), and how to teach it."""
    if found.related:
        opening = "I don't have an answer to that yet."
    else:
        opening = f"I don't know that yet: none of the answers I was given about {' '.join(found.entity)} answers it."
    shown_examples = shown(found)
    if len(shown_examples) == 1:
        e = shown_examples[0]
        listing = f"A related answer I was given, to “{_quote(question_of(e))}”: “{_quote(e['output'])}”"
    else:
        listing = "Related answers I was given:\n" + "\n".join(
            f"- to “{_quote(question_of(e))}”: “{_quote(e['output'])}”" for e in shown_examples
        )
    invite = "If you know the answer, correct this reply and I will use it from now on."
    return "\n\n".join(part for part in (opening, listing if shown_examples else "", invite) if part)


def shown(found: Consultation) -> list[dict[str, Any]]:
    """The examples an honest reply shows as related: the close ones, else the closest about its names."""
    return found.related or found.about


class RelatedAnswer:
    """The honest reply (honest_reply) served as the answer (the AnswerStream contract), with no decoding:
    the question has no approved answer, and what the examples hold is shown as related, not asserted."""

    finish_reason = "stop"
    from_example: int | None = None

    def __init__(self, found: Consultation, params: GenerationParams, *, model_version: str | None, tokenizer: Any = None):
        self.found = found
        self.params = params
        self.model_version = model_version
        self.related_ids = [e["id"] for e in shown(found)]
        self.prompt = FittedPrompt(text="", token_ids=[], messages=[], demonstrations=[])
        self.text = ""
        self._answer = honest_reply(found)
        self.completion_tokens = answer_tokens(self._answer, tokenizer)

    @property
    def prompt_tokens(self) -> int:
        return 0

    @property
    def few_shot_ids(self) -> list[int]:
        return []

    def cancel(self) -> None:
        pass

    def __iter__(self) -> Iterator[str]:
        self.text = self._answer
        yield self._answer
