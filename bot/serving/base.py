"""What every serving engine shares: how to decode one answer (GenerationParams), what an
answer being generated holds (AnswerState), and fitting a prompt to the context window
(PromptFitting). The local engine and the upstream engine both build on these, so neither
imports the other."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.config import MAX_TEMPERATURE
from core.errors import ValidationError
from core.prompts import FittedPrompt, Message, fit_for_answer


@dataclass
class GenerationParams:
    """How to decode one answer."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)

    def validate(self) -> GenerationParams:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValidationError("max_tokens must be a positive integer")
        if not (0 <= self.temperature <= MAX_TEMPERATURE):
            raise ValidationError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}")
        if not (0 < self.top_p <= 1):
            raise ValidationError("top_p must be greater than 0 and at most 1")
        if len(self.stop) > 4 or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValidationError("stop must be at most 4 non-empty strings")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AnswerState:
    """What every engine's answer holds (the AnswerStream contract): its prompt and
    parameters, the text so far, how it ended, and a cancel flag."""

    def __init__(self, prompt: FittedPrompt, params: GenerationParams):
        self.prompt = prompt
        self.params = params
        self.text = ""
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.from_example: int | None = None  # engines generate; only an approved answer served as is sets it
        self._cancel = threading.Event()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.token_ids)

    @property
    def few_shot_ids(self) -> list[int]:
        return [d["id"] for d in self.prompt.demonstrations if "id" in d]


class PromptFitting:
    """What every engine does alike: fit a prompt to its context window (leaving room for the
    answer) and generate a whole answer by draining its stream(). A subclass sets `tokenizer`
    and `max_context_tokens` and defines stream()."""

    tokenizer: Any
    max_context_tokens: int

    def prepare(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> FittedPrompt:
        """Fit the prompt (demonstrations and old turns dropped as needed) to the context window."""
        return fit_for_answer(
            self.tokenizer, messages, demonstrations,
            context_tokens=self.max_context_tokens, max_new_tokens=params.max_new_tokens,
        )

    def generate(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> Any:
        """Generate a whole answer; returns the finished answer."""
        generation = self.stream(messages, params, demonstrations)  # type: ignore[attr-defined]
        for _ in generation:
            pass
        return generation
