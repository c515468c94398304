"""The model engine: a base model plus an optional active LoRA adapter, which streams answers to
many people at once and can swap its adapter while the server runs.

It composes three parts: the scheduler (bot/serving/scheduler.py: continuous batching on one
decode thread, chunked prefill), the dtype policy (bot/serving/dtype.py: which answers decode and
which prompts prefill in bf16 on the CPU) and the adapter swap (bot/serving/adapters.py: adapters
read through peft and merged into the base weights, which are restored before every merge).

Swaps drain: `activate` reads and checks the adapter while answers keep streaming, then stops
admitting new requests, lets the answers in flight finish on the version they started with, swaps
(well under 0.5 s for the bundled model), then admits the waiting requests on the new version. No
answer ever mixes versions, and each records the version that produced it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.serving.adapters import AdapterSwap, LayerDelta, read_adapter
from bot.serving.base import GenerationParams, PromptFitting
from bot.serving.dtype import DtypePolicy
from bot.serving.scheduler import (
    DEFAULT_FIRST_TOKEN_RECHECK_MARGIN,
    DEFAULT_MAX_BATCH,
    DEFAULT_PREFILL_CHUNK_TOKENS,
    Generation,
    Scheduler,
    end_token_ids,
)
from core.errors import ModelLoadError, ValidationError
from core.prompts import FittedPrompt, Message, encode
from storage.vocabulary import BASE_VERSION

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class Engine(PromptFitting):
    """Holds the base model, the tokenizer and the active adapter (merged); thread-safe."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        base_name: str,
        max_context_tokens: int = 2048,
        max_batch: int = DEFAULT_MAX_BATCH,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int | None = None,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        first_token_recheck_margin: float = DEFAULT_FIRST_TOKEN_RECHECK_MARGIN,
    ):
        self.base_model = model  # the weights served: the active adapter is merged into them
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.max_context_tokens = max_context_tokens
        self.version = BASE_VERSION
        self._adapter_path: str | Path | None = None  # the serving version's adapter, to merge back after answer_with
        self.dtypes = DtypePolicy(
            model, bf16_from_batch=bf16_from_batch, bf16_prefill_from_tokens=bf16_prefill_from_tokens
        )
        self.swap = AdapterSwap(model, copies=self.dtypes.models[1:])  # the bf16 copy follows every merge
        self.scheduler = Scheduler(
            self.dtypes,
            tokenizer,
            version=lambda: self.version,
            max_batch=max_batch,
            prefill_chunk_tokens=prefill_chunk_tokens,
            first_token_recheck_margin=first_token_recheck_margin,
        )

    @property
    def bf16_from_batch(self) -> int:
        """From how many answers at once a batch decodes in bf16 (0: never)."""
        return self.dtypes.bf16_from_batch

    @classmethod
    def load(
        cls,
        base_model: str | None,
        data_dir: Path,
        *,
        max_context_tokens: int = 2048,
        max_batch: int = DEFAULT_MAX_BATCH,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int | None = None,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    ) -> Engine:
        """Resolve and load the base model (converting the bundled one on first use)."""
        from core.models import load_base_model, resolve_base_model

        ref = resolve_base_model(base_model, data_dir)
        model, tokenizer = load_base_model(ref)
        window = getattr(model.config, "max_position_embeddings", None) or max_context_tokens
        return cls(
            model,
            tokenizer,
            base_name=ref.name,
            max_context_tokens=min(max_context_tokens, window),
            max_batch=max_batch,
            bf16_from_batch=bf16_from_batch,
            bf16_prefill_from_tokens=bf16_prefill_from_tokens,
            prefill_chunk_tokens=prefill_chunk_tokens,
        )

    # -- adapters ------------------------------------------------------------

    def _read_adapter(self, adapter_path: str | Path | None, version: str) -> dict[str, LayerDelta]:
        return read_adapter(self.base_model, adapter_path or "", version=version, base_name=self.base_name)

    def check_adapter(self, version: str, path: Path) -> None:
        """Read the adapter as this engine would serve it (files, kind, shapes against the base
        model) and refuse non-finite weights; raises ModelLoadError. Serves nothing new."""
        deltas = self._read_adapter(path, version)
        broken = next((name for name, delta in deltas.items() if not delta.is_finite()), None)
        if broken is not None:
            raise ModelLoadError(f"Adapter {version} at {path} has infinite or NaN weights ({broken}): retrain it")

    def health(self) -> None:
        """Nothing to report beyond /healthz's own fields: the model runs in this process."""
        return

    def local_model(self) -> Engine:
        """This engine: its model is in this process (bot/serving/contracts.py LocalModel)."""
        return self

    def activate(self, version: str | None, adapter_path: str | Path | None = None) -> float:
        """Serve `version` from now on (None or "base": the base model); return the seconds the swap took.

        The adapter is read and checked first, while answers keep streaming; then
        new requests wait, the answers in flight finish on the old version, and
        the weights are swapped (base weights restored, new adapter merged).
        """
        started = time.perf_counter()
        version = version or BASE_VERSION
        deltas = {} if version == BASE_VERSION else self._read_adapter(adapter_path, version)
        with self.scheduler.hold():
            swap_started = time.perf_counter()
            self.swap.merge(deltas)
            self.version = version
            self._adapter_path = adapter_path
        log.info("Now serving %s (weights swapped in %.3f s)", version, time.perf_counter() - swap_started)
        return time.perf_counter() - started

    # -- generation ----------------------------------------------------------

    def stream(
        self,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
        demonstrations: Sequence[dict[str, Any]] = (),
    ) -> Generation:
        """Start generating an answer; iterate the result for text as it comes."""
        params = (params or GenerationParams()).validate()
        return self.scheduler.submit(self.prepare(messages, params, demonstrations), params)

    def answer_with(
        self,
        version: str,
        adapter_path: str | Path | None,
        messages: Sequence[Message],
        params: GenerationParams | None = None,
    ) -> str:
        """One whole answer (few-shot off) by `version`, serving or not, for an admin trying it before promoting.

        The serving version answers through the scheduler like any chat. Another version is read and
        checked first, then merged in while the scheduler is held (answers in flight finish on the
        serving version, new ones wait, so no user is answered by it), answers alone, greedy unless
        `params` sample, and the serving weights are merged back: chat pauses for that one answer.
        """
        import torch

        params = (params or GenerationParams()).validate()
        version = version or BASE_VERSION
        if version == self.version:
            return self.generate(messages, params).text
        deltas = {} if version == BASE_VERSION else self._read_adapter(adapter_path, version)
        prompt = self.prepare(messages, params)
        end = sorted(end_token_ids(self.tokenizer, self.model))
        ids = torch.tensor([prompt.token_ids], device=self.model.device)
        sampling = params.sampling
        with self.scheduler.hold():
            serving = {} if self.version == BASE_VERSION else self._read_adapter(self._adapter_path, self.version)
            self.swap.merge(deltas)
            try:
                with torch.no_grad():
                    output = self.model.generate(  # type: ignore[operator]
                        ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_new_tokens,
                        do_sample=sampling, temperature=params.temperature if sampling else None,
                        top_p=params.top_p if sampling else None, top_k=None,
                        eos_token_id=end, pad_token_id=end[0] if end else None,
                    )
            finally:
                self.swap.merge(serving)
        text = self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        for stop in params.stop:
            text = text.split(stop, 1)[0] if stop else text
        return text.strip()

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
        return self.scheduler.submit(FittedPrompt(prompt, ids, [], []), params)
