"""What every serving engine shares: how to decode one answer (GenerationParams), what an
answer being generated holds (AnswerState), and fitting a prompt to the context window
(PromptFitting). The local engine and the upstream engine both build on these, so neither
imports the other."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pydantic

from core.config import GREEDY_BELOW_TEMPERATURE, MaxNewTokens, StopTexts, Temperature, TopP, error_words
from core.errors import ValidationError
from core.prompts import FittedPrompt, Message, fit_for_answer


@dataclass
class GenerationParams:
    """How to decode one answer. The bounds are core/config.py's, shared with the HTTP request
    models and ServeConfig; validate() checks them, since a caller may fill these fields from anywhere."""

    max_new_tokens: MaxNewTokens = 256
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    stop: StopTexts = field(default_factory=list)
    # For _CHECK: an instance is checked field by field, not taken as valid because of its type.
    __pydantic_config__ = pydantic.ConfigDict(revalidate_instances="always")

    def validate(self) -> GenerationParams:
        """Return self when every field is within its bounds; else raise ValidationError naming each bad one."""
        try:
            _CHECK.validate_python(self, strict=True)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                "; ".join(f"{'.'.join(map(str, e['loc']))} {error_words(e)}, not {e['input']!r}" for e in exc.errors())
            ) from None
        return self

    @property
    def sampling(self) -> bool:
        """Whether to sample: false for temperature 0 and for one so small that greedy decoding is its meaning."""
        return self.temperature >= GREEDY_BELOW_TEMPERATURE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Checks a GenerationParams against its annotated bounds; strict: no "8" for 8, no True for 1.
_CHECK = pydantic.TypeAdapter(GenerationParams)


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
