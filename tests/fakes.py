"""Fakes for tests of the code around generation and training (UI handlers, HTTP
plumbing): an engine with a queue of canned replies, and a trainer that records what
it was asked. Never a stand-in for the feature itself."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.serving.base import GenerationParams
from bot.serving.contracts import AnswerStream, ChatEngine
from core.errors import ConflictError, NotFoundError
from storage.vocabulary import BASE_VERSION


@dataclass
class FakePrompt:
    token_ids: list[int]
    demonstrations: list[dict[str, Any]]
    notices: list[str] = field(default_factory=list)


class FakeGeneration(AnswerStream):
    """Streams its canned reply word by word."""

    def __init__(self, reply: str, version: str, params: GenerationParams, prompt: FakePrompt):
        self._reply = reply
        self.params = params
        self.prompt = prompt
        self.model_version = version
        self.text = ""
        self.finish_reason = "stop"
        self.completion_tokens = len(reply.split())
        self.cancelled = False

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
            yield piece


class FakeEngine(ChatEngine):
    """Answers with queued replies (or echoes the question); records every call.

    It declares the ChatEngine contract, and tests/test_contracts.py checks that it and
    bot.engine.Engine both match it, so a change to Engine breaks this fake's tests."""

    def __init__(self, version: str = BASE_VERSION):
        self.version = version
        self.base_name = "fake"
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
        prompt = FakePrompt(token_ids=list(range(sum(len(m["content"].split()) for m in messages))), demonstrations=list(demonstrations))
        return FakeGeneration(reply, self.version, params, prompt)

    def activate(self, version: str | None, adapter_path: Any = None) -> float:
        self.version = version or BASE_VERSION
        return 0.0


class RecordingTrainer:
    """Stands in for training.manager's TrainingManager: records calls, one job at a time."""

    def __init__(self):
        self.jobs: dict[int, dict] = {}
        self.started: list[tuple] = []

    def start(self, params, reason):
        if any(j["status"] == "running" for j in self.jobs.values()):
            raise ConflictError("A train job is already running")
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = {"status": "running", "progress": None, "losses": [], "metrics": None,
                             "model_version": None, "promoted": False, "error": None}
        self.started.append((params, reason))
        return job_id

    def job_view(self, job_id):
        if job_id not in self.jobs:
            raise NotFoundError(f"Job {job_id} does not exist")
        return self.jobs[job_id]

    def cancel(self, job_id):
        self.job_view(job_id)["status"] = "cancelled"

    def models_view(self):
        return [{"version": "v1", "status": "active", "metrics": {"test_loss": 1.0}}]

    def learning_report(self, version, *, not_learned_only=False):
        if version not in (None, "v1"):
            raise NotFoundError(f"Model version {version} does not exist")
        items = [{"example_id": 3, "candidate_learned": False, "reason": "try more epochs"}]
        return {"version": "v1", "compared_with": "base", "learned": 0, "serving_learned": 0, "n": 1,
                "items": items, "not_learned_only": not_learned_only}

    def activate(self, version):
        if version != "v1":
            raise NotFoundError(f"Model version {version} does not exist")
        return {"version": version, "status": "active"}
