"""Continuous batching: one decode thread runs every answer in progress as one batch.

A new request joins at the next token boundary (its prompt is prefilled, then its row is added to
the batch's KV cache, left-padded to a common length with per-row positions); a finished or
abandoned request leaves the batch at the next boundary. Each request has its own sampling
settings, stop strings and token queue, so it streams on its own, and one person's long answer
never makes another wait for it to end.

While other answers decode, a new prompt is prefilled `prefill_chunk_tokens` (256) at a time with
one decode step of the batch between chunks, so a long prompt delays the others' next token by one
chunk, not by its whole prefill; with nobody decoding it is prefilled whole. Which weights (fp32 or
bf16) each pass runs on is the DtypePolicy's to say; a long prompt prefilled in bf16 gives its
first token from that pass, unless bf16's two likeliest first tokens are within
`first_token_recheck_margin` logits: then the last prompt token runs again on the decode weights,
so a near tie is decided as they would decide it.

`hold()` stops admitting new requests and waits for the answers in flight to finish: what the
engine's adapter swap runs inside.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from bot.serving.base import AnswerState, GenerationParams
from core.prompts import FittedPrompt

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel

    from bot.serving.dtype import DtypePolicy

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
# While other answers decode, a new prompt is prefilled this many tokens at a time, with a decode
# step for the running batch between chunks, so a long prompt does not stall everyone. 0 = whole.
DEFAULT_PREFILL_CHUNK_TOKENS = 256
# A long prompt's first token comes from its bf16 prefill, unless its two likeliest tokens are closer
# than this many logits: then the last prompt token runs again on the decode weights (one step).
DEFAULT_FIRST_TOKEN_RECHECK_MARGIN = 1.0

_DONE = object()


class Generation(AnswerState):
    """One answer being generated: iterate it for text pieces; when iteration
    ends, `text`, `finish_reason` and the token counts are final.

    The decode thread puts token ids on this answer's queue; iterating turns
    them into text in the consumer's thread, so detokenising and stop strings
    never slow the shared batch.
    """

    def __init__(self, scheduler: Scheduler, prompt: FittedPrompt, params: GenerationParams):
        super().__init__(prompt, params)
        self.scheduler = scheduler
        self.model_version: str | None = None  # set when the answer joins the batch
        # Every token id the decode thread produced for this answer, its end token included.
        self.token_ids: list[int] = []
        self._tokens: queue.Queue[object] = queue.Queue()
        self._error: BaseException | None = None
        self._finished = False  # set by the decode thread

    @property
    def finished(self) -> bool:
        """Whether the decode thread is done with this answer (its batch slot is free)."""
        return self._finished

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop decoding; the answer's batch slot is freed at the next token boundary."""
        self._cancel.set()
        self.scheduler._wake()

    # Called by the decode thread.
    def _push(self, token: int) -> None:
        self.completion_tokens += 1
        self.token_ids.append(token)
        self._tokens.put(token)

    def _finish(self, reason: str = "stop", error: BaseException | None = None) -> None:
        self.finish_reason = reason
        self._error = error
        self._finished = True
        self._tokens.put(_DONE)

    def _queued_tokens(self) -> Iterator[int]:
        while True:
            token = self._tokens.get()
            if token is _DONE:
                return
            yield cast(int, token)

    def _pieces(self) -> Iterator[str]:
        """Text as tokens come: whole characters only (a multi-byte character may span tokens)."""
        tokenizer = self.scheduler.tokenizer
        ids: list[int] = []
        shown = 0
        for token in self._queued_tokens():
            if token in self.scheduler.eos_ids:
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


def _near_tie(logits: torch.Tensor, margin: float) -> bool:
    """Whether any row's two likeliest next tokens are within `margin` logits of each other."""
    top = logits.topk(2, dim=-1).values
    return bool(((top[:, 0] - top[:, 1]) < margin).any())


def _kv_layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer keys and values. (transformers types its layers as a union of kinds, some
    without keys; the DynamicCache of a decoder like these holds key/value layers only.)"""
    return list(cache.layers)


def _cast_cache(cache: DynamicCache, dtype: torch.dtype) -> None:
    for layer in _kv_layers(cache):
        if layer.keys.dtype != dtype:
            layer.keys = layer.keys.to(dtype)
            layer.values = layer.values.to(dtype)


class _Batch:
    """The running batch: one row per answer in progress, sharing one KV cache.

    Rows are left-padded to a common cache length; `mask` marks each row's real
    positions and `lengths` its real token count (the next token's position).
    """

    def __init__(
        self, rows: list[Generation], cache: DynamicCache, mask: torch.Tensor, lengths: torch.Tensor,
        last: torch.Tensor,
    ):
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [B, T] long
        self.lengths = lengths  # [B] long
        self.last = last  # [B] long: the token each row feeds next

    def __len__(self) -> int:
        return len(self.rows)

    def _layers(self) -> list[Any]:
        return _kv_layers(self.cache)

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

    def cast(self, dtype: torch.dtype) -> None:
        """Keep the cache in the dtype of the weights decoding this step."""
        _cast_cache(self.cache, dtype)

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self._layers()[0].keys.dtype
        return dtype

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

    def __init__(
        self, rows: list[Generation], ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache,
        model: PreTrainedModel,
    ):
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


def _sample(logits: torch.Tensor, rows: list[Generation]) -> list[int]:
    """The next token of each row, by that row's own settings (greedy when temperature is 0 or tiny)."""
    import torch

    chosen = logits.argmax(-1)
    for i, generation in enumerate(rows):
        params = generation.params
        if not params.sampling:
            continue
        probs = torch.softmax(logits[i].float() / params.temperature, -1)
        if params.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (always the most likely token, even for
            # a top_p that float32 rounds to 0, such as 5e-324).
            drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
            drop[0] = False
            sorted_probs[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        chosen[i] = torch.multinomial(probs, 1)[0]
    tokens: list[int] = chosen.tolist()
    return tokens


def end_token_ids(tokenizer: Any, model: PreTrainedModel) -> set[int]:
    """The tokens that end an answer: the tokenizer's end token and the model's generation config's."""
    eos = tokenizer.eos_token_id
    ids = {eos} if isinstance(eos, int) else set(eos or [])
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    return ids


class Scheduler:
    """Runs every answer in progress as one batch on a decode thread (started by the first request).

    `version()` names what the weights serve; each answer records it when it joins the batch.
    """

    def __init__(
        self,
        dtypes: DtypePolicy,
        tokenizer: Any,
        *,
        version: Callable[[], str],
        max_batch: int = DEFAULT_MAX_BATCH,
        prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS,
        first_token_recheck_margin: float = DEFAULT_FIRST_TOKEN_RECHECK_MARGIN,
    ):
        self.dtypes = dtypes
        self.tokenizer = tokenizer
        self.version = version
        self.max_batch = max_batch
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.first_token_recheck_margin = first_token_recheck_margin
        self.eos_ids = end_token_ids(tokenizer, dtypes.model)
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        # Scheduler state, guarded by _cond.
        self._cond = threading.Condition()
        self._waiting: collections.deque[Generation] = collections.deque()
        self._active = 0  # rows in the running batch
        self._holds = 0  # hold() calls waiting for the batch to drain, or running their block
        self._hold_lock = threading.Lock()  # one hold() block at a time
        self._thread: threading.Thread | None = None

    def submit(self, prompt: FittedPrompt, params: GenerationParams) -> Generation:
        """Queue an answer to `prompt`; it joins the batch at the next token boundary."""
        generation = Generation(self, prompt, params)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="engine-decode", daemon=True)
                self._thread.start()
            self._waiting.append(generation)
            self._cond.notify_all()
        return generation

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Admit no new request until the block exits; the block starts once the answers in flight
        have finished, and no forward pass runs while it does (the weights may change inside).
        Requests submitted meanwhile wait, and are admitted together when it exits."""
        with self._hold_lock:
            with self._cond:
                self._holds += 1
            try:
                with self._cond:
                    while self._active:
                        self._cond.wait()
                yield
            finally:
                with self._cond:
                    self._holds -= 1
                    self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the decode thread ---------------------------------------------------

    def _admit(self, running: int) -> list[Generation]:
        """Take waiting requests into the batch (none while held); called under _cond."""
        admitted: list[Generation] = []
        while self._waiting and not self._holds and running + len(admitted) < self.max_batch:
            generation = self._waiting.popleft()
            if generation.cancelled:
                generation._finish("stop")
                continue
            generation.model_version = self.version()
            admitted.append(generation)
        if admitted and self.dtypes.prefills_apart(running):
            # Long prompts (prefilled in bf16) and short ones are prefilled apart: the others wait a turn.
            long_first = self.dtypes.is_long(len(admitted[0].prompt.token_ids))
            later = [g for g in admitted if self.dtypes.is_long(len(g.prompt.token_ids)) != long_first]
            if later:
                admitted = [g for g in admitted if self.dtypes.is_long(len(g.prompt.token_ids)) == long_first]
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
                    model = self.dtypes.decode_model(len(batch))
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

    def _forward(
        self, model: PreTrainedModel, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
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
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

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
        model = self.dtypes.prefill_model(width, running + len(admitted))
        cache = DynamicCache(config=model.config)
        device = self.dtypes.device
        return _Prefill(list(admitted), ids.to(device), mask.to(device), cache, model)

    def _prefill_step(self, prefill: _Prefill, chunk: int, running: int) -> _Batch | None:
        """Prefill the next `chunk` columns (0: all that remain); once the prompts are done,
        sample each one's first token and return them as a batch ready to join."""
        import torch

        final = self.dtypes.decode_model(running + len(prefill.rows))  # the weights the joined batch decodes with
        end = prefill.width if chunk <= 0 else min(prefill.width, prefill.done + chunk)
        logits = self._forward(
            prefill.model, prefill.ids[:, prefill.done : end], prefill.mask[:, :end],
            prefill.positions[:, prefill.done : end], prefill.cache,
        )
        prefill.done = end
        if end < prefill.width:
            return None  # the running batch decodes a step before the next chunk
        if prefill.model is not final and _near_tie(logits, self.first_token_recheck_margin):
            # bf16 may rank two near-equal first tokens the other way round from the decode weights,
            # and greedy answers then part from the first word: redo the last column on those weights.
            for layer in _kv_layers(prefill.cache):
                layer.keys = layer.keys[:, :, :-1, :]
                layer.values = layer.values[:, :, :-1, :]
            _cast_cache(prefill.cache, final.dtype)
            last = prefill.width - 1
            logits = self._forward(final, prefill.ids[:, last:], prefill.mask, prefill.positions[:, last:], prefill.cache)
        first = _sample(logits, prefill.rows)
        batch = _Batch(list(prefill.rows), prefill.cache, prefill.mask, prefill.mask.sum(-1),
                       torch.tensor(first, dtype=torch.long, device=self.dtypes.device))
        batch.cast(final.dtype)
        for generation, token in zip(prefill.rows, first, strict=True):
            generation._push(token)
        return batch

    def _decode(self, model: PreTrainedModel, batch: _Batch) -> None:
        """One token for every row."""
        import torch

        batch.mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(model, batch.last[:, None], batch.mask, batch.lengths[:, None], batch.cache)
        batch.lengths = batch.lengths + 1
        tokens = _sample(logits, batch.rows)
        batch.last = torch.tensor(tokens, dtype=torch.long, device=self.dtypes.device)
        for generation, token in zip(batch.rows, tokens, strict=True):
            if not generation.cancelled:
                generation._push(token)

    def _retire(self, batch: _Batch) -> _Batch | None:
        """Finish rows that hit an end token, their token cap, or were cancelled; drop them from the batch."""
        keep = []
        for i, generation in enumerate(batch.rows):
            last = int(batch.last[i])
            if generation.cancelled or last in self.eos_ids:
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
