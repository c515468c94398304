"""What the server needs from the training side: the TrainingController behind the Admin
tab and the admin API.

bot never imports training (training.manager.TrainingManager implements this, and
launch.py hands it to the server), so this Protocol is the contract; it lives in core,
which both sides import. tests/test_contracts.py checks the implementation member for
member. Change the Protocol and its implementation together.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


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
