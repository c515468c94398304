"""A fake engine with a queue of canned replies, for tests of the code around
generation (UI handlers, HTTP plumbing). Never a stand-in for the feature itself."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.contracts import AnswerStream, ChatEngine
from core.errors import ConflictError, NotFoundError
from core.prompts import FittedPrompt
from core.training_contract import (
    Activation,
    ComparisonSample,
    HyperParameter,
    JobView,
    LearningItem,
    LearningReport,
    ModelVersionView,
    ScheduleStatus,
    TrainingController,
)
from storage.vocabulary import BASE_VERSION, JobStatus, VersionStatus
from training.config import RetrainPolicy


class FakeGeneration(AnswerStream):
    """Streams its canned reply word by word."""

    def __init__(
        self, reply: str, version: str, params: GenerationParams, prompt: FittedPrompt, piece_delay: float = 0.0
    ):
        self._reply = reply
        self._piece_delay = piece_delay
        self.params = params
        self.prompt = prompt
        self.model_version = version
        self.text = ""
        self.finish_reason = "stop"
        self.completion_tokens = len(reply.split())
        self.cancelled = False
        self.from_example = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.token_ids)

    @property
    def few_shot_ids(self) -> list[int]:
        return [d["id"] for d in self.prompt.demonstrations]

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[str]:
        for word in self._reply.split(" "):
            if self.cancelled:  # as the real engine: a cancelled answer ends at the next piece
                return
            piece = word if not self.text else " " + word
            self.text += piece
            if self._piece_delay:
                time.sleep(self._piece_delay)
            yield piece


class FakeEngine(ChatEngine):
    """Answers with queued replies (or echoes the question); records every call.

    It declares the ChatEngine contract, and tests/test_contracts.py checks that it and
    bot.engine.Engine both match it, so a change to Engine breaks this fake's tests."""

    def __init__(self, version: str = BASE_VERSION, piece_delay: float = 0.0):
        self.version = version
        self.piece_delay = piece_delay  # seconds before each streamed word: time to act while an answer streams
        self.base_name = "fake"
        self.tokenizer = None  # approved answers are counted in words
        self.replies: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def stream(
        self, messages: Sequence[dict[str, str]], params: GenerationParams | None = None, demonstrations: Sequence[dict[str, Any]] = ()
    ) -> FakeGeneration:
        params = (params or GenerationParams()).validate()
        self.calls.append({"messages": list(messages), "params": params, "demonstrations": list(demonstrations)})
        reply = self.replies.pop(0) if self.replies else f"You said: {messages[-1]['content']}"
        words = [w for m in messages for w in m["content"].split()]
        prompt = FittedPrompt(" ".join(words), list(range(len(words))), list(messages), list(demonstrations))
        return FakeGeneration(reply, self.version, params, prompt, self.piece_delay)

    def activate(self, version: str | None, adapter_path: Any = None) -> float:
        self.version = version or BASE_VERSION
        return 0.0

    def answer_with(
        self, version: str, adapter_path: Any, messages: Sequence[dict[str, str]], params: GenerationParams | None = None
    ) -> str:
        """The next queued reply (or an echo naming `version`); recorded with the version and adapter asked for."""
        params = (params or GenerationParams()).validate()
        self.calls.append({"messages": list(messages), "params": params, "version": version, "adapter_path": adapter_path})
        return self.replies.pop(0) if self.replies else f"{version} says: {messages[-1]['content']}"

    def health(self) -> None:
        return None

    def local_model(self) -> None:
        return None


class FakeTraining(TrainingController):
    """Stands in for training.manager.TrainingManager in tests of the admin API: records the jobs
    started, one at a time, and answers with typed views. It declares the TrainingController
    contract, and tests/test_contracts.py checks it member for member."""

    def __init__(self) -> None:
        self.policy = RetrainPolicy()
        self.adapter_check = None
        self.jobs: dict[int, JobView] = {}
        self.started: list[tuple[dict[str, Any] | None, str]] = []
        self.active = BASE_VERSION

    def start(self, params: dict[str, Any] | None = None, reason: str = "admin") -> int:
        if any(j.status == JobStatus.RUNNING for j in self.jobs.values()):
            raise ConflictError("A train job is already running")
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = JobView(id=job_id, kind="train", status=JobStatus.RUNNING, reason=reason)
        self.started.append((params, reason))
        return job_id

    def cancel(self, job_id: int) -> JobView:
        view = self.job_view(job_id)
        view.status = JobStatus.CANCELLED
        return view

    def job_view(self, job_id: int) -> JobView:
        if job_id not in self.jobs:
            raise NotFoundError(f"Job {job_id} does not exist")
        return self.jobs[job_id]

    def latest_job(self) -> JobView | None:
        return self.jobs[max(self.jobs)] if self.jobs else None

    def schedule_status(self) -> ScheduleStatus:
        return ScheduleStatus(new_examples=0, due=False, policy=self.policy.describe())

    def activate(self, version: str | None) -> Activation:
        if version not in (None, BASE_VERSION, "v1"):
            raise NotFoundError(f"Model version {version} does not exist")
        previous, self.active = self.active, version or BASE_VERSION
        return Activation(active=self.active, previous=previous)

    def rollback(self) -> Activation:
        return self.activate(BASE_VERSION)

    def models_view(self) -> list[ModelVersionView]:
        status = VersionStatus.ACTIVE if self.active == "v1" else VersionStatus.INACTIVE
        return [ModelVersionView(version="v1", status=status, active=self.active == "v1")]

    def comparison(self, version: str) -> list[ComparisonSample]:
        return []

    def learning_report(self, version: str | None = None, *, not_learned_only: bool = False) -> LearningReport:
        if version not in (None, "v1"):
            raise NotFoundError(f"Model version {version} does not exist")
        items = [LearningItem(example_id=3, question="Q?", reference="A.", reason="try more epochs")]
        learned = [LearningItem(example_id=4, question="R?", reference="B.", candidate_learned=True)]
        return LearningReport(
            version="v1", compared_with=BASE_VERSION, learned=1, serving_learned=0, n=2,
            items=items if not_learned_only else items + learned,
        )

    def hyperparameters(self, names: tuple[str, ...]) -> list[HyperParameter]:
        return []
