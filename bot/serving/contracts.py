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
    from core.prompts import FittedPrompt


@runtime_checkable
class AnswerStream(Protocol):
    """One answer being generated. Iterate it for text pieces; once iteration
    ends, `text`, `finish_reason` and the token counts are final."""

    text: str
    finish_reason: str  # "stop" or "length"
    completion_tokens: int
    model_version: str | None  # the version that produced the answer, known once it started
    params: GenerationParams
    prompt: FittedPrompt  # the prompt as fitted to the context window: its tokens, demonstrations and notices
    # The approved example whose answer this is, word for word (ServeConfig.few_shot_direct); None when
    # a model wrote it.
    from_example: int | None

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def few_shot_ids(self) -> list[int]: ...

    def cancel(self) -> None:
        """Stop generating early (the client went away)."""

    def __iter__(self) -> Iterator[str]: ...


@runtime_checkable
class ChatEngine(Protocol):
    """A model that answers chat messages and can switch the adapter version it serves.

    What only some engines can do is declared here rather than probed for: `health()` is None for
    an engine whose model runs in this process, and `local_model()` is None for one whose model
    runs elsewhere (an upstream server) or nowhere (a test fake).
    """

    version: str  # the version serving now; storage.vocabulary.BASE_VERSION for the base model
    base_name: str  # the base model's name, for people
    # The base model's tokenizer: it counts an approved answer's tokens against max_tokens (None: its words).
    tokenizer: Any | None

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

    def answer_with(
        self,
        version: str,
        adapter_path: str | Path | None,
        messages: Sequence[dict[str, str]],
        params: GenerationParams | None = None,
    ) -> str:
        """One whole answer (few-shot off) by `version`, whether or not it serves, without serving it to
        anyone else: an admin's "try it on both". Raises ConflictError where the engine cannot."""
        ...

    def health(self) -> dict[str, Any] | None:
        """The state of the model server generation goes to, for /healthz (`status` ok, degraded or
        unreachable); None when the model runs in this process."""
        ...

    def local_model(self) -> LocalModel | None:
        """The model in this process, for the work that needs its weights; None when there is none here."""
        ...


@runtime_checkable
class LocalModel(Protocol):
    """What an engine with the model in this process offers besides chat (bot/serving/engine.py)."""

    def stream_prompt(self, prompt: str, params: GenerationParams | None = None) -> AnswerStream:
        """Continue an already-rendered prompt (POST /v1/completions, when this server is another's upstream)."""
        ...

    def check_adapter(self, version: str, path: Path) -> None:
        """Read an adapter as it would be served and refuse it (ModelLoadError) if it cannot be."""
        ...
