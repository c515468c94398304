"""Which weights the engine runs: the model's own (fp32 on the CPU) and, where bf16 pays, a bf16
copy; a batch of N answers decodes on one of them and a prompt of W tokens is prefilled on one.

Decode: on a CPU without native bf16 instructions a batch decodes in bf16 from `bf16_from_batch`
(4) answers at once, where bf16 is faster, and one person's answer stays fp32, where it is not; on a
CPU with native bf16 every batch decodes in bf16 (see the DEFAULT_* and NATIVE_* figures below).

Prefill: on the CPU a prompt of `bf16_prefill_from_tokens` (256) or more tokens is prefilled in
bf16, about 2.5x faster than fp32, its first token included; the KV cache is then cast to the
decode weights' dtype and the rest of the answer decodes as before. (Running the last prompt token
on the fp32 weights every time cost a whole fp32 step, about a tenth of a long prompt's first
token; the scheduler reruns it only for a near tie.) Short prompts keep their fp32 prefill, even
when a long one arrives at the same moment: the two are admitted apart (`prefills_apart`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# From this many rows the batch decodes in bf16, on a CPU without native bf16 instructions: there
# bf16 decodes a batch of 8 1.85x faster than fp32 (measured on 2 cores with the bundled model) but a
# lone answer slower, so one person's answer stays fp32. bf16 changes some greedy answers.
DEFAULT_BF16_FROM_BATCH = 4
# On a CPU with native bf16 (AVX512-BF16 or AMX) every batch decodes in bf16, one answer included.
# One answer reads every weight once per token, so its speed is memory bandwidth: bf16 halves the
# bytes. Measured on 2 AVX512-BF16 cores, one 128-token answer: 1.25x fp32's tokens/s (the lm_head
# product alone 7.7 ms -> 2.5 ms a token).
NATIVE_BF16_FROM_BATCH = 1
# Prompts at least this long are prefilled in bf16 (their first token comes from that pass, unless
# it is a near tie: see the scheduler's first_token_recheck_margin); docs/performance.md has the
# figures. 0 = never.
DEFAULT_BF16_PREFILL_FROM_TOKENS = 256


def default_bf16_from_batch() -> int:
    """The batch size from which a CPU fp32 model decodes in bf16, for this machine's CPU."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU feature tests
    native = any(getattr(cpu, check, lambda: False)() for check in checks)
    return NATIVE_BF16_FROM_BATCH if native else DEFAULT_BF16_FROM_BATCH


class DtypePolicy:
    """The model (`model`) and, for an fp32 model on the CPU with bf16 enabled, its bf16 copy
    (`bf16_model`); which of the two a batch decodes with and a prompt is prefilled on."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int = DEFAULT_BF16_PREFILL_FROM_TOKENS,
    ):
        import torch

        self.model = model
        self.device: torch.device = next(model.parameters()).device
        if bf16_from_batch is None:  # not chosen: what measures faster on this CPU
            bf16_from_batch = default_bf16_from_batch()
        self.bf16_from_batch = bf16_from_batch
        self.bf16_prefill_from_tokens = bf16_prefill_from_tokens
        self.bf16_model: PreTrainedModel | None = None
        wants_bf16 = bf16_from_batch > 0 or bf16_prefill_from_tokens > 0
        if wants_bf16 and model.dtype == torch.float32 and self.device.type == "cpu":
            import copy

            # (transformers wraps PreTrainedModel.to with functools.wraps, which hides `self` from mypy)
            self.bf16_model = copy.deepcopy(model).to(dtype=torch.bfloat16).eval()  # type: ignore[call-arg]

    @property
    def models(self) -> list[PreTrainedModel]:
        """Every copy of the weights: a change to the model's weights must reach each of them."""
        return [self.model] if self.bf16_model is None else [self.model, self.bf16_model]

    def decode_model(self, rows: int) -> PreTrainedModel:
        """The weights a batch of `rows` answers decodes with: bf16 for big batches (when enabled), else the model's own."""
        if self.bf16_model is not None and 0 < self.bf16_from_batch <= rows:
            return self.bf16_model
        return self.model

    def prefill_model(self, width: int, rows: int) -> PreTrainedModel:
        """The weights a prompt of `width` tokens is prefilled on (its first token comes from them too),
        joining a batch of `rows` answers: bf16 for long prompts (when enabled), else the decode weights."""
        if self.bf16_model is not None and self.is_long(width):
            return self.bf16_model
        return self.decode_model(rows)

    def is_long(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` tokens is prefilled in bf16 (when there is a bf16 copy)."""
        return 0 < self.bf16_prefill_from_tokens <= tokens

    def prefills_apart(self, running: int) -> bool:
        """Whether long and short prompts admitted at one moment, beside `running` answers, are prefilled
        apart, so a short prompt keeps its fp32 prefill (and answer) when a long one arrives with it.
        (Where even one answer decodes in bf16, every prompt is prefilled in bf16: nothing to keep apart.)"""
        return (
            self.bf16_model is not None
            and self.bf16_prefill_from_tokens > 0
            and self.decode_model(running + 1) is not self.bf16_model
        )
