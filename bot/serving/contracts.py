"""What the chat service needs from an engine: ChatEngine, and the AnswerStream it returns.

More than one engine exists (bot/serving/engine.py's local model, bot/serving/upstream.py's
OpenAI-compatible server, the tests' FakeEngine), so these Protocols are the contract. An
implementation need not inherit from them; tests/test_contracts.py checks that the engines and
the test fakes match them member for member, so a change to one side fails a test instead of a
request. Change a Protocol and its implementations together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.serving.base import GenerationParams


@runtime_checkable
class AnswerStream(Protocol):
    """One answer being generated. Iterate it for text pieces; once iteration
    ends, `text`, `finish_reason` and the token counts are final."""

    text: str
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    model_version: str | None  # the version that produced the answer, known once it started
    params: GenerationParams
    prompt: Any  # the fitted prompt: token_ids, demonstrations, notices

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def few_shot_ids(self) -> list[int]: ...

    def cancel(self) -> None:
        """Stop generating early (the client went away)."""

    def __iter__(self) -> Iterator[str]: ...


@runtime_checkable
class ChatEngine(Protocol):
    """A model that answers chat messages and can switch the adapter version it serves."""

    version: str  # the version serving now; storage.vocabulary.BASE_VERSION for the base model
    base_name: str  # the base model's name, for people

    def stream(
        self,
        messages: Sequence[dict[str, str]],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> AnswerStream:
        """Start generating an answer to `messages` (few-shot `demonstrations` go into the prompt)."""
        ...

    def activate(self, version: str | None, adapter_path: str | Path | None = None) -> float:
        """Serve `version` (None or the base version: the base model); return the seconds the swap took."""
        ...
