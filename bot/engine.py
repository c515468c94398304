"""The model engine: a base model plus an optional active LoRA adapter, which
streams answers and can swap its adapter while the server runs.

Generation is serialised by one lock: on 2 CPU cores two concurrent decodes
gain nothing, and the lock lets an adapter swap wait for in-flight answers,
which therefore finish on the version they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import MAX_TEMPERATURE
from core.errors import ModelLoadError, ValidationError
from core.prompts import FittedPrompt, Message, encode, fit_prompt
from storage.vocabulary import BASE_VERSION  # the version name of the base model, for bot's callers too

log = logging.getLogger(__name__)


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


class Generation:
    """One answer being generated: iterate it for text pieces; when iteration
    ends, `text`, `finish_reason` and the token counts are final."""

    def __init__(self, engine: Engine, prompt: FittedPrompt, params: GenerationParams):
        from transformers import TextIteratorStreamer

        self.engine = engine
        self.prompt = prompt
        self.params = params
        self.text = ""
        self.finish_reason = "stop"
        self.completion_tokens = 0
        self.model_version: str | None = None
        self._cancel = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.token_ids)

    @property
    def few_shot_ids(self) -> list[int]:
        return [d["id"] for d in self.prompt.demonstrations if "id" in d]

    def cancel(self) -> None:
        """Stop decoding early (the client went away)."""
        self._cancel.set()

    def _run(self) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        cancel = self._cancel

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        engine = self.engine
        try:
            with engine._lock:
                self.model_version = engine.version
                self._started.set()
                input_ids = torch.tensor([self.prompt.token_ids], device=engine.model.device)
                sampling = self.params.temperature > 0
                kwargs: dict[str, Any] = dict(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=self.params.max_new_tokens,
                    do_sample=sampling,
                    streamer=self._streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                    pad_token_id=engine.tokenizer.pad_token_id,
                )
                if sampling:
                    kwargs.update(temperature=self.params.temperature, top_p=self.params.top_p, top_k=0)
                else:
                    # Greedy: clear sampling defaults a model's generation_config may carry.
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                with torch.inference_mode(), engine._adapter_context():
                    output = engine.model.generate(**kwargs)
                new_tokens = output[0, input_ids.shape[1] :]
                self.completion_tokens = int(new_tokens.shape[0])
                if self.completion_tokens >= self.params.max_new_tokens and int(new_tokens[-1]) not in engine.eos_ids:
                    self.finish_reason = "length"
        except BaseException as exc:  # surfaced to the consumer in __iter__
            self._error = exc
            self._started.set()
            self._streamer.end()

    def __iter__(self) -> Iterator[str]:
        stops = self.params.stop
        hold = max((len(s) for s in stops), default=1) - 1
        emitted = 0
        for piece in self._streamer:
            self.text += piece
            if stops:
                hit = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
                if hit >= 0:
                    self.text = self.text[:hit]
                    self.finish_reason = "stop"
                    self.cancel()
                    if hit > emitted:
                        yield self.text[emitted:hit]
                    emitted = hit
                    break
            safe = len(self.text) - hold
            if safe > emitted:
                yield self.text[emitted:safe]
                emitted = safe
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._cancel.is_set() and self.finish_reason != "stop":
            self.finish_reason = "stop"
        if len(self.text) > emitted:
            yield self.text[emitted:]
        self.text = self.text.strip()


class Engine:
    """Holds the base model, the tokenizer and the active adapter; thread-safe."""

    def __init__(self, model: Any, tokenizer: Any, *, base_name: str, max_context_tokens: int = 2048):
        self.base_model = model
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.max_context_tokens = max_context_tokens
        self.version = BASE_VERSION
        self._lock = threading.Lock()
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        if isinstance(config_eos, int):
            self.eos_ids.add(config_eos)
        elif config_eos:
            self.eos_ids.update(config_eos)

    @classmethod
    def load(cls, base_model: str | None, data_dir: Path, *, max_context_tokens: int = 2048) -> Engine:
        """Resolve and load the base model (converting the bundled one on first use)."""
        from core.models import load_base_model, resolve_base_model

        ref = resolve_base_model(base_model, data_dir)
        model, tokenizer = load_base_model(ref)
        window = getattr(model.config, "max_position_embeddings", None) or max_context_tokens
        return cls(model, tokenizer, base_name=ref.name, max_context_tokens=min(max_context_tokens, window))

    # -- adapters ------------------------------------------------------------

    def _adapter_context(self) -> Any:
        import contextlib

        from peft import PeftModel

        if self.version == BASE_VERSION and isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def activate(self, version: str | None, adapter_path: str | Path | None = None) -> float:
        """Serve `version` from now on (None or "base": the base model); return the seconds it took.

        Waits for the answer in progress, which finishes on the old version.
        """
        started = time.perf_counter()
        if version in (None, BASE_VERSION):
            with self._lock:
                self.version = BASE_VERSION
            return time.perf_counter() - started
        from peft import PeftModel

        path = Path(adapter_path or "")
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"Adapter for {version} not found at {path}: retrain, or activate another version")
        with self._lock:
            try:
                if not isinstance(self.model, PeftModel):
                    self.model = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=version)
                    self.model.eval()
                elif version not in self.model.peft_config:
                    self.model.load_adapter(str(path), adapter_name=version)
                self.model.set_adapter(version)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ModelLoadError(f"Adapter {version} at {path} does not load: {exc}") from exc
            # Keep only the adapter in use; older ones can be loaded again in 0.35 s.
            for name in list(self.model.peft_config):
                if name != version:
                    self.model.delete_adapter(name)
            self.version = version
        log.info("Now serving %s", version)
        return time.perf_counter() - started

    # -- generation ----------------------------------------------------------

    def prepare(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> FittedPrompt:
        """Fit the prompt (demonstrations and old turns dropped as needed) to the context window."""
        budget = self.max_context_tokens - params.max_new_tokens
        if budget < 16:
            raise ValidationError(
                f"max_tokens {params.max_new_tokens} leaves no room for the prompt in a "
                f"{self.max_context_tokens}-token context: ask for fewer tokens"
            )
        return fit_prompt(self.tokenizer, messages, demonstrations, budget)

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> Generation:
        """Start generating an answer; iterate the result for text as it comes."""
        params = (params or GenerationParams()).validate()
        return Generation(self, self.prepare(messages, params, demonstrations), params)

    def stream_prompt(self, prompt: str, params: GenerationParams | None = None) -> Generation:
        """Start generating after an already-rendered prompt (POST /v1/completions, when this server
        is another Exemplar's upstream); the prompt must fit the context window as it is."""
        params = (params or GenerationParams()).validate()
        ids = encode(self.tokenizer, prompt)
        if not ids or len(ids) + params.max_new_tokens > self.max_context_tokens:
            raise ValidationError(
                f"The prompt takes {len(ids)} tokens and max_tokens {params.max_new_tokens} more; the context "
                f"window is {self.max_context_tokens} tokens: send a shorter prompt or ask for fewer tokens"
            )
        return Generation(self, FittedPrompt(prompt, ids, [], []), params)

    def generate(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> Generation:
        """Generate a whole answer; returns the finished Generation."""
        generation = self.stream(messages, params, demonstrations)
        for _ in generation:
            pass
        return generation
