"""The model engine: a base model plus an optional active LoRA adapter, which
streams answers to many people at once and can swap its adapter while the
server runs.

Continuous batching: one decode thread runs every answer in progress as one
batch. A new request joins at the next token boundary (its prompt is
prefilled, then its row is added to the batch's KV cache, left-padded to a
common length with per-row positions); a finished or abandoned request leaves
the batch at the next boundary. Each request has its own sampling settings,
stop strings and token queue, so it streams on its own.

Prefill: on the CPU a prompt of `bf16_prefill_from_tokens` (256) or more
tokens is prefilled in bf16, about 2.5x faster than fp32, its first token
included; the KV cache is then cast to the decode weights' dtype and the rest
of the answer decodes as before. (Running the last prompt token on the fp32
weights every time cost a whole fp32 step, about a tenth of a long prompt's
first token.) Only when bf16's two likeliest first tokens are within
FIRST_TOKEN_RECHECK_MARGIN logits does the last prompt token run again on the
decode weights, so a near tie is decided as fp32 would. Short prompts keep their fp32 prefill, even when a long one arrives
at the same moment. While other answers decode, a new prompt is prefilled
`prefill_chunk_tokens` (256) at a time with one decode step of the batch
between chunks, so a long prompt delays the others' next token by one chunk,
not by its whole prefill; with nobody decoding it is prefilled whole.

Adapters are served merged into the base weights (no LoRA cost per token).
The base weights a merge touches are kept untouched aside, and every swap
first copies them back, so the base never drifts however often it swaps.

Swaps drain: `activate` stops admitting new requests, lets the answers in
flight finish on the version they started with, swaps (well under 0.5 s for
the bundled model), then admits the waiting requests on the new version. No
answer ever mixes versions, and each records the version that produced it.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bot.serving.base import AnswerState, GenerationParams, PromptFitting
from core.errors import ModelLoadError, ValidationError
from core.prompts import FittedPrompt, Message, encode
from storage.vocabulary import BASE_VERSION

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
# From this many rows the batch decodes in bf16, on a CPU without native bf16 instructions: there
# bf16 decodes a batch of 8 1.85x faster than fp32 (measured on 2 cores with the bundled model) but a
# lone answer slower, so one person's answer stays fp32. bf16 changes some greedy answers.
DEFAULT_BF16_FROM_BATCH = 4
# On a CPU with native bf16 (AVX512-BF16 or AMX) every batch decodes in bf16, one answer included.
# One answer reads every weight once per token, so its speed is memory bandwidth: bf16 halves the
# bytes. Measured on 2 AVX512-BF16 cores, one 128-token answer: 1.25x fp32's tokens/s (the lm_head
# product alone 7.7 ms -> 2.5 ms a token).
NATIVE_BF16_FROM_BATCH = 1


def default_bf16_from_batch() -> int:
    """The batch size from which a CPU fp32 model decodes in bf16, for this machine's CPU."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU feature tests
    native = any(getattr(cpu, check, lambda: False)() for check in checks)
    return NATIVE_BF16_FROM_BATCH if native else DEFAULT_BF16_FROM_BATCH


# Prompts at least this long are prefilled in bf16 (their first token comes from that pass, see
# FIRST_TOKEN_RECHECK_MARGIN): docs/performance.md has the figures. 0 = never.
DEFAULT_BF16_PREFILL_FROM_TOKENS = 256
# A long prompt's first token comes from its bf16 prefill, unless its two likeliest tokens are closer
# than this many logits: then the last prompt token runs again on the decode weights (one step).
FIRST_TOKEN_RECHECK_MARGIN = 1.0
# While other answers decode, a new prompt is prefilled this many tokens at a time, with a decode
# step for the running batch between chunks, so a long prompt does not stall everyone. 0 = whole.
DEFAULT_PREFILL_CHUNK_TOKENS = 256


_DONE = object()


class Generation(AnswerState):
    """One answer being generated: iterate it for text pieces; when iteration
    ends, `text`, `finish_reason` and the token counts are final.

    The engine's decode thread puts token ids on this answer's queue; iterating
    turns them into text in the consumer's thread, so detokenising and stop
    strings never slow the shared batch.
    """

    def __init__(self, engine: Engine, prompt: FittedPrompt, params: GenerationParams):
        super().__init__(prompt, params)
        self.engine = engine
        self.model_version: str | None = None  # set when the answer joins the batch
        self._tokens: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._finished = False  # set by the decode thread
        engine._submit(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop decoding; the answer's batch slot is freed at the next token boundary."""
        self._cancel.set()
        self.engine._wake()

    # Called by the decode thread.
    def _push(self, token: int) -> None:
        self.completion_tokens += 1
        self._tokens.put(token)

    def _finish(self, reason: str = "stop", error: BaseException | None = None) -> None:
        self.finish_reason = reason
        self._error = error
        self._finished = True
        self._tokens.put(_DONE)

    def _token_ids(self) -> Iterator[int]:
        while True:
            token = self._tokens.get()
            if token is _DONE:
                return
            yield token

    def _pieces(self) -> Iterator[str]:
        """Text as tokens come: whole characters only (a multi-byte character may span tokens)."""
        tokenizer = self.engine.tokenizer
        ids: list[int] = []
        shown = 0
        for token in self._token_ids():
            if token in self.engine.eos_ids:
                continue
            ids.append(token)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            if len(text) > shown:
                yield text[shown:]
                shown = len(text)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if len(text) > shown:
            yield text[shown:]

    def __iter__(self) -> Iterator[str]:
        stops = self.params.stop
        hold = max((len(s) for s in stops), default=1) - 1
        emitted = 0
        stopped = False
        try:
            for piece in self._pieces():
                self.text += piece
                if stops:
                    hit = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
                    if hit >= 0:
                        self.text = self.text[:hit]
                        stopped = True
                        self.cancel()
                        if hit > emitted:
                            yield self.text[emitted:hit]
                        emitted = hit
                        break
                safe = len(self.text) - hold
                if safe > emitted:
                    yield self.text[emitted:safe]
                    emitted = safe
        finally:
            # The consumer may stop early (the client left): free the slot at once.
            if not self._finished:
                self.cancel()
        if self._error is not None:
            raise self._error
        if stopped or self.cancelled:
            self.finish_reason = "stop"
        if len(self.text) > emitted:
            yield self.text[emitted:]
        self.text = self.text.strip()


def _near_tie(logits: Any, margin: float) -> bool:
    """Whether any row's two likeliest next tokens are within `margin` logits of each other."""
    top = logits.topk(2, dim=-1).values
    return bool(((top[:, 0] - top[:, 1]) < margin).any())


def _cast_cache(cache: Any, dtype: Any) -> None:
    for layer in cache.layers:
        if layer.keys.dtype != dtype:
            layer.keys = layer.keys.to(dtype)
            layer.values = layer.values.to(dtype)


class _Batch:
    """The running batch: one row per answer in progress, sharing one KV cache.

    Rows are left-padded to a common cache length; `mask` marks each row's real
    positions and `lengths` its real token count (the next token's position).
    """

    def __init__(self, rows: list[Generation], cache: Any, mask: Any, lengths: Any, last: Any):
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [B, T] long
        self.lengths = lengths  # [B] long
        self.last = last  # [B] long: the token each row feeds next

    def __len__(self) -> int:
        return len(self.rows)

    def _layers(self) -> list[Any]:
        return list(self.cache.layers)

    def select(self, keep: list[int]) -> None:
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        self.lengths = self.lengths.index_select(0, index)
        self.last = self.last.index_select(0, index)
        # Drop columns that are padding in every remaining row.
        real = self.mask.any(0).nonzero()
        start = int(real[0]) if len(real) else self.mask.shape[1]
        if start:
            self.mask = self.mask[:, start:]
            for layer in self._layers():
                layer.keys = layer.keys[:, :, start:, :]
                layer.values = layer.values[:, :, start:, :]

    def cast(self, dtype: Any) -> None:
        """Keep the cache in the dtype of the weights decoding this step."""
        _cast_cache(self.cache, dtype)

    @property
    def dtype(self) -> Any:
        return self.cache.layers[0].keys.dtype

    def pad_left(self, width: int) -> None:
        import torch.nn.functional as F

        extra = width - self.mask.shape[1]
        if extra <= 0:
            return
        self.mask = F.pad(self.mask, (extra, 0))
        for layer in self._layers():
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))

    def extend(self, other: _Batch) -> None:
        import torch

        width = max(self.mask.shape[1], other.mask.shape[1])
        self.pad_left(width)
        other.pad_left(width)
        self.rows += other.rows
        for mine, theirs in zip(self._layers(), other._layers(), strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, other.mask])
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.last = torch.cat([self.last, other.last])


class _Prefill:
    """New prompts being prefilled (left-padded together), possibly a chunk at a time.

    Every column runs on `model` (bf16 for long prompts, when enabled), which also gives the first
    token unless that is a near tie (then the last column runs again on the decode weights); the
    cache is then cast to the decode weights' dtype.
    """

    def __init__(self, rows: list[Generation], ids: Any, mask: Any, cache: Any, model: Any):
        self.rows = rows
        self.ids = ids
        self.mask = mask
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = cache
        self.model = model
        self.done = 0  # columns prefilled so far

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])


def _sample(logits: Any, rows: list[Generation]) -> list[int]:
    """The next token of each row, by that row's own settings (greedy when temperature is 0)."""
    import torch

    chosen = logits.argmax(-1)
    for i, generation in enumerate(rows):
        params = generation.params
        if params.temperature <= 0:
            continue
        probs = torch.softmax(logits[i].float() / params.temperature, -1)
        if params.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (always the most likely token).
            drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        chosen[i] = torch.multinomial(probs, 1)[0]
    return chosen.tolist()


class Engine(PromptFitting):
    """Holds the base model, the tokenizer and the active adapter (merged); thread-safe."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        base_name: str,
        max_context_tokens: int = 2048,
        max_batch: int = DEFAULT_MAX_BATCH,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int = DEFAULT_BF16_PREFILL_FROM_TOKENS,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
    ):
        self.base_model = model
        self.model = model
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.max_context_tokens = max_context_tokens
        self.max_batch = max_batch
        self.version = BASE_VERSION
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        config_eos = getattr(model.generation_config, "eos_token_id", None)
        if isinstance(config_eos, int):
            self.eos_ids.add(config_eos)
        elif config_eos:
            self.eos_ids.update(config_eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        # Scheduler state, guarded by _cond.
        self._cond = threading.Condition()
        self._waiting: collections.deque[Generation] = collections.deque()
        self._active = 0  # rows in the running batch
        self._swapping = 0  # activate() calls waiting for the batch to drain
        self._thread: threading.Thread | None = None
        # Weights: the merged adapter's deltas live in the base weights; originals kept here.
        self._model_lock = threading.Lock()
        self._originals: dict[str, Any] = {}
        # A bf16 copy of the weights for big batches, when the model is fp32 on the CPU.
        import torch

        self.device = next(model.parameters()).device
        if bf16_from_batch is None:  # not chosen: what measures faster on this CPU
            bf16_from_batch = default_bf16_from_batch()
        self.bf16_from_batch = bf16_from_batch
        self.bf16_prefill_from_tokens = bf16_prefill_from_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._bf16_model: Any = None
        wants_bf16 = bf16_from_batch > 0 or bf16_prefill_from_tokens > 0
        if wants_bf16 and model.dtype == torch.float32 and self.device.type == "cpu":
            import copy

            self._bf16_model = copy.deepcopy(model).to(torch.bfloat16).eval()

    def _model_for(self, rows: int) -> Any:
        """The weights a batch of `rows` answers decodes with: bf16 for big batches (when enabled), else the model's own."""
        if self._bf16_model is not None and 0 < self.bf16_from_batch <= rows:
            return self._bf16_model
        return self.model

    def _prefill_model_for(self, width: int, rows: int) -> Any:
        """The weights a prompt is prefilled on (and its first token comes from): bf16 for long prompts (when enabled)."""
        if self._bf16_model is not None and 0 < self.bf16_prefill_from_tokens <= width:
            return self._bf16_model
        return self._model_for(rows)

    @classmethod
    def load(
        cls,
        base_model: str | None,
        data_dir: Path,
        *,
        max_context_tokens: int = 2048,
        max_batch: int = DEFAULT_MAX_BATCH,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int = DEFAULT_BF16_PREFILL_FROM_TOKENS,
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

    def read_adapter(self, adapter_path: str | Path, version: str = "") -> dict[str, Any]:
        """The weight change a LoRA adapter makes, per linear module: {module name: delta}.

        Raises ModelLoadError when the files are missing, unreadable, of a kind
        this engine cannot merge, or do not fit this base model.
        """
        import torch

        path = Path(adapter_path or "")
        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"Adapter for {version} not found at {path}: retrain, or activate another version")
        try:
            config = json.loads(config_file.read_text())
            if (path / "adapter_model.safetensors").is_file():
                from safetensors.torch import load_file

                tensors = load_file(str(path / "adapter_model.safetensors"))
            else:
                tensors = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:  # safetensors raises its own error type for corrupt files
            raise ModelLoadError(f"Adapter {version} at {path} does not load: {exc}") from exc
        if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("modules_to_save"):
            raise ModelLoadError(f"Adapter {version} at {path} is not a plain LoRA adapter; this engine merges only those")
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
        rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        modules = dict(self.base_model.named_modules())
        deltas: dict[str, Any] = {}
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                if ".lora_B." not in key:
                    raise ModelLoadError(f"Adapter {version} at {path} has weights this engine cannot merge: {key}")
                continue
            stem = key[: -len(".lora_A.weight")]
            name = stem.removeprefix("base_model.model.")
            b = tensors.get(stem + ".lora_B.weight")
            module = modules.get(name)
            short = name.rsplit(".", 1)[-1]
            r = int(rank_pattern.get(short, rank))
            scale = float(alpha_pattern.get(short, alpha)) / (math.sqrt(r) if config.get("use_rslora") else r)
            if b is None or module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise ModelLoadError(f"Adapter {version} at {path} does not fit {self.base_name}: no module {name}")
            delta = (b.float() @ a.float()) * scale
            if config.get("fan_in_fan_out"):
                delta = delta.T
            if delta.shape != module.weight.shape:
                raise ModelLoadError(
                    f"Adapter {version} at {path} does not fit {self.base_name}: {name} is "
                    f"{tuple(module.weight.shape)}, the adapter makes {tuple(delta.shape)}"
                )
            deltas[name] = delta
        if not deltas:
            raise ModelLoadError(f"Adapter {version} at {path} holds no LoRA weights")
        return deltas

    def _merge(self, deltas: dict[str, Any]) -> None:
        """Put the base weights back, then add `deltas` (an empty dict leaves the plain base)."""
        import torch

        modules = dict(self.base_model.named_modules())
        with torch.no_grad():
            for name, original in self._originals.items():
                modules[name].weight.copy_(original)
            for name, delta in deltas.items():
                weight = modules[name].weight
                if name not in self._originals:
                    self._originals[name] = weight.detach().clone()
                weight.add_(delta.to(weight.dtype))
            if self._bf16_model is not None:
                # The bf16 copy is always derived from the fp32 weights, so it cannot drift either.
                copies = dict(self._bf16_model.named_modules())
                for name in set(self._originals) | set(deltas):
                    copies[name].weight.copy_(modules[name].weight)

    def base_copy(self) -> Any:
        """A copy of the plain base model, any merged adapter taken out, for work that needs the base's
        own outputs whichever version serves (few-shot question vectors)."""
        import copy

        import torch

        with self._model_lock:
            clone = copy.deepcopy(self.base_model)
            modules = dict(clone.named_modules())
            with torch.no_grad():
                for name, original in self._originals.items():
                    modules[name].weight.copy_(original)
        return clone.eval()

    def activate(self, version: str | None, adapter_path: str | Path | None = None) -> float:
        """Serve `version` from now on (None or "base": the base model); return the seconds the swap took.

        The adapter is read and checked first, while answers keep streaming; then
        new requests wait, the answers in flight finish on the old version, and
        the weights are swapped (base weights restored, new adapter merged).
        """
        started = time.perf_counter()
        version = version or BASE_VERSION
        deltas = {} if version == BASE_VERSION else self.read_adapter(adapter_path or "", version)
        with self._cond:
            self._swapping += 1
            try:
                while self._active:
                    self._cond.wait()
                swap_started = time.perf_counter()
                with self._model_lock:
                    self._merge(deltas)
                    self.version = version
            finally:
                self._swapping -= 1
                self._cond.notify_all()
        log.info("Now serving %s (weights swapped in %.3f s)", version, time.perf_counter() - swap_started)
        return time.perf_counter() - started

    # -- scheduling ----------------------------------------------------------

    def _submit(self, generation: Generation) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="engine-decode", daemon=True)
                self._thread.start()
            self._waiting.append(generation)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _admit(self, running: int) -> list[Generation]:
        """Take waiting requests into the batch (none while a swap waits); called under _cond."""
        admitted: list[Generation] = []
        while self._waiting and not self._swapping and running + len(admitted) < self.max_batch:
            generation = self._waiting.popleft()
            if generation.cancelled:
                generation._finish("stop")
                continue
            generation.model_version = self.version
            admitted.append(generation)
        short_prefill_fp32 = self._model_for(running + 1) is not self._bf16_model
        if self._bf16_model is not None and self.bf16_prefill_from_tokens > 0 and short_prefill_fp32 and admitted:
            # Long prompts (prefilled in bf16) and short ones are prefilled apart, so a short prompt
            # keeps its fp32 prefill (and answer) when a long one arrives at the same moment. (Where
            # even one answer decodes in bf16, every prompt is prefilled in bf16: nothing to keep apart.)
            def is_long(g: Generation) -> bool:
                return len(g.prompt.token_ids) >= self.bf16_prefill_from_tokens

            later = [g for g in admitted if is_long(g) != is_long(admitted[0])]
            if later:
                admitted = [g for g in admitted if is_long(g) == is_long(admitted[0])]
                self._waiting.extendleft(reversed(later))
        return admitted

    def _loop(self) -> None:
        batch: _Batch | None = None
        prefill: _Prefill | None = None  # prompts still being prefilled, a chunk per step
        while True:
            with self._cond:
                while True:
                    # Drop abandoned waiting requests now, so they never cost a prefill.
                    for generation in [g for g in self._waiting if g.cancelled]:
                        self._waiting.remove(generation)
                        generation._finish("stop")
                    # New prompts wait until the ones being prefilled have joined.
                    admitted = self._admit(len(batch) if batch else 0) if prefill is None else []
                    if admitted or batch or prefill:
                        break
                    self._cond.wait()
                self._active = (len(batch) if batch else 0) + len(admitted) + (len(prefill.rows) if prefill else 0)
            try:
                with self._model_lock:
                    if admitted:
                        prefill = self._start_prefill(admitted, len(batch) if batch else 0)
                    if prefill is not None and all(g.cancelled for g in prefill.rows):
                        for generation in prefill.rows:
                            generation._finish("stop")
                        prefill = None
                    if prefill is not None:
                        # With nobody decoding, nothing waits on this prompt: prefill it whole.
                        chunk = self.prefill_chunk_tokens if batch is not None else 0
                        running = len(batch) if batch else 0
                        joining = self._prefill_step(prefill, chunk, running)
                        if joining is not None:
                            prefill = None
                            joining = self._retire(joining)
                        if joining is not None:
                            if batch is None:
                                batch = joining
                            else:
                                batch.cast(joining.dtype)
                                batch.extend(joining)
                    if batch is not None:
                        model = self._model_for(len(batch))
                        batch.cast(model.dtype)
                        self._decode(model, batch)
                        batch = self._retire(batch)
            except BaseException as exc:  # fail the answers in flight, keep serving new ones
                log.exception("Generation failed")
                rows = (batch.rows if batch else []) + (prefill.rows if prefill else []) + admitted
                for generation in rows:
                    if not generation._finished:
                        generation._finish("stop", exc)
                batch = None
                prefill = None
            with self._cond:
                self._active = (len(batch) if batch else 0) + (len(prefill.rows) if prefill else 0)
                self._cond.notify_all()

    def _forward(self, model: Any, input_ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        import torch

        with torch.inference_mode():
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float()

    def _start_prefill(self, admitted: list[Generation], running: int) -> _Prefill:
        """Left-pad the new prompts together and pick the weights their prefill runs on."""
        import torch
        from transformers import DynamicCache

        width = max(len(g.prompt.token_ids) for g in admitted)
        ids = torch.full((len(admitted), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(admitted), width), dtype=torch.long)
        for i, generation in enumerate(admitted):
            tokens = generation.prompt.token_ids
            ids[i, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
            mask[i, width - len(tokens) :] = 1
        model = self._prefill_model_for(width, running + len(admitted))
        cache = DynamicCache(config=model.config)
        return _Prefill(list(admitted), ids.to(self.device), mask.to(self.device), cache, model)

    def _prefill_step(self, prefill: _Prefill, chunk: int, running: int) -> _Batch | None:
        """Prefill the next `chunk` columns (0: all that remain); once the prompts are done,
        sample each one's first token and return them as a batch ready to join."""
        import torch

        final = self._model_for(running + len(prefill.rows))  # the weights the joined batch decodes with
        end = prefill.width if chunk <= 0 else min(prefill.width, prefill.done + chunk)
        logits = self._forward(
            prefill.model, prefill.ids[:, prefill.done : end], prefill.mask[:, :end],
            prefill.positions[:, prefill.done : end], prefill.cache,
        )
        prefill.done = end
        if end < prefill.width:
            return None  # the running batch decodes a step before the next chunk
        if prefill.model is not final and _near_tie(logits, FIRST_TOKEN_RECHECK_MARGIN):
            # bf16 may rank two near-equal first tokens the other way round from the decode weights,
            # and greedy answers then part from the first word: redo the last column on those weights.
            for layer in prefill.cache.layers:
                layer.keys = layer.keys[:, :, :-1, :]
                layer.values = layer.values[:, :, :-1, :]
            _cast_cache(prefill.cache, final.dtype)
            last = prefill.width - 1
            logits = self._forward(final, prefill.ids[:, last:], prefill.mask, prefill.positions[:, last:], prefill.cache)
        first = _sample(logits, prefill.rows)
        batch = _Batch(list(prefill.rows), prefill.cache, prefill.mask, prefill.mask.sum(-1),
                       torch.tensor(first, dtype=torch.long, device=self.device))
        batch.cast(final.dtype)
        for generation, token in zip(prefill.rows, first, strict=True):
            generation._push(token)
        return batch

    def _decode(self, model: Any, batch: _Batch) -> None:
        """One token for every row."""
        import torch

        batch.mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(model, batch.last[:, None], batch.mask, batch.lengths[:, None], batch.cache)
        batch.lengths = batch.lengths + 1
        tokens = _sample(logits, batch.rows)
        batch.last = torch.tensor(tokens, dtype=torch.long, device=self.device)
        for generation, token in zip(batch.rows, tokens, strict=True):
            if not generation.cancelled:
                generation._push(token)

    def _retire(self, batch: _Batch) -> _Batch | None:
        """Finish rows that hit an end token, their token cap, or were cancelled; drop them from the batch."""
        keep = []
        for i, generation in enumerate(batch.rows):
            last = int(batch.last[i])
            if generation.cancelled:
                reason = "stop"
            elif last in self.eos_ids:
                reason = "stop"
            elif generation.completion_tokens >= generation.params.max_new_tokens:
                reason = "length"
            else:
                keep.append(i)
                continue
            generation._finish(reason)
        if not keep:
            return None
        if len(keep) < len(batch):
            batch.select(keep)
        return batch

    # -- generation ----------------------------------------------------------

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
