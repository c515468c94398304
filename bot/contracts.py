"""What `bot` needs from the objects it is handed: the engine that answers and
the training controller behind the Admin tab and the admin API.

bot never imports training, and more than one engine exists (bot/engine.py's
local model, an upstream server, the tests' FakeEngine), so these Protocols are
the contract. An implementation need not inherit from them; tests/test_contracts.py
checks that bot.engine.Engine, training.manager.TrainingManager and the test
fakes match them member for member, so a change to one side fails a test
instead of a request. Change a Protocol and its implementations together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.engine import GenerationParams


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


class RetrainPolicyView(Protocol):
    def describe(self) -> str:
        """The policy in words, for the Admin tab."""
        ...


@runtime_checkable
class TrainingController(Protocol):
    """Training jobs and model versions, as the Admin tab and the admin API use them.

    Views are JSON-ready dicts. Errors are core.errors exceptions (ValidationError
    for bad hyper-parameters, ConflictError while a job runs, NotFoundError).
    """

    policy: RetrainPolicyView

    def start(self, params: dict[str, Any] | None = None, reason: str = "admin") -> int:
        """Start a training job with optional hyper-parameter overrides; return its id."""
        ...

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Ask a queued or running job to stop; return its view."""
        ...

    def job_view(self, job_id: int) -> dict[str, Any]:
        """A job's status, progress, losses, metrics, log tail and the version it produced."""
        ...

    def latest_job(self) -> dict[str, Any] | None: ...

    def schedule_status(self) -> dict[str, Any]:
        """How many new examples arrived since the last run, and whether a run is due."""
        ...

    def activate(self, version: str | None) -> dict[str, Any]:
        """Serve `version` ('base' or None: the base model); return {"active", "previous"}."""
        ...

    def rollback(self) -> dict[str, Any]: ...

    def models_view(self) -> list[dict[str, Any]]:
        """Every version, newest first, with its headline metrics."""
        ...

    def comparison(self, version: str) -> list[dict[str, Any]]:
        """Held-out answers of `version` beside those of the version it was judged against."""
        ...

    def learning_report(self, version: str | None = None, *, not_learned_only: bool = False) -> dict[str, Any]:
        """"Did it learn this?": per approved correction, learned or not and the margins (training/manager.py)."""
        ...
