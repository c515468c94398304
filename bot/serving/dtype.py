"""Which weights the engine runs: the model's own (fp32 on the CPU) and, where bf16 pays, a bf16
copy; a batch of N answers decodes on one of them and a prompt of W tokens is prefilled on one.

Whether bf16 pays depends on the CPU, so unless the settings say, it is chosen at start:
- on a CPU with native bf16 (AVX512-BF16 or AMX) every batch decodes in bf16, one answer included,
  and long prompts are prefilled in bf16 (see the NATIVE_* and DEFAULT_* figures below);
- elsewhere bf16 is emulated, and a product of the model's own shape is timed in both dtypes
  (bf16_speedup): batches of `DEFAULT_BF16_FROM_BATCH` (4) or more decode in bf16 only if bf16 was
  faster for a batch, and long prompts are prefilled in bf16 only if it was faster for a long
  prompt. On a 2-core AVX2-only CPU bf16 measured 8x slower for a long prompt and 2x slower for a
  batch of 8, so everything stays fp32 there.

Prefill: a prompt of `bf16_prefill_from_tokens` (256) or more tokens, when enabled, is prefilled in
bf16, about 2.5x faster than fp32 with native bf16, its first token included; the KV cache is then
cast to the decode weights' dtype and the rest of the answer decodes as before. (Running the last prompt token
on the fp32 weights every time cost a whole fp32 step, about a tenth of a long prompt's first
token; the scheduler reruns it only for a near tie.) Short prompts keep their fp32 prefill, even
when a long one arrives at the same moment: the two are admitted apart (`prefills_apart`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# From this many rows the batch decodes in bf16 on a CPU without native bf16 instructions, where the
# timing at start says bf16 is faster for a batch (one CPU measured 1.85x for a batch of 8 with the
# bundled model, and slower for a lone answer, so one person's answer stays fp32). bf16 changes some
# greedy answers.
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
# Without native bf16, bf16 is used for a job only where it timed at least this many times faster than fp32:
# real gains are 1.5x and more, and emulated bf16 is several times slower, so noise cannot tip the choice.
BF16_PAYS = 1.2
# The rows of the timed products: a batch decoding, and a long prompt's prefill.
BATCH_ROWS, PREFILL_ROWS = 8, 256


def bf16_speedup(model: PreTrainedModel, rows: int) -> float:
    """How many times faster than fp32 a bf16 product of the model's MLP shape (capped at 1024 x 4096,
    to stay cheap for big models) runs here for `rows` rows: the fastest of three runs each, after a
    warm-up (a busy machine only slows runs down). About 0.1 s for the bundled model on an AVX2 CPU."""
    import time

    import torch

    hidden = min(int(getattr(model.config, "hidden_size", 1024)), 1024)
    inner = min(int(getattr(model.config, "intermediate_size", 4 * hidden)), 4096)
    x, w = torch.randn(rows, hidden), torch.randn(inner, hidden)

    def fastest(a: torch.Tensor, b: torch.Tensor) -> float:
        times = []
        with torch.inference_mode():
            for _ in range(4):
                started = time.perf_counter()
                a @ b.T
                times.append(time.perf_counter() - started)
        return min(times[1:])

    return fastest(x, w) / fastest(x.bfloat16(), w.bfloat16())


def default_bf16_from_batch(model: PreTrainedModel) -> int:
    """The batch size from which a CPU fp32 model decodes in bf16 on this machine (0: never)."""
    from core.models import cpu_has_native_bf16

    if cpu_has_native_bf16():
        return NATIVE_BF16_FROM_BATCH
    return DEFAULT_BF16_FROM_BATCH if bf16_speedup(model, BATCH_ROWS) >= BF16_PAYS else 0


def default_bf16_prefill_from_tokens(model: PreTrainedModel) -> int:
    """The prompt length from which a CPU fp32 model prefills in bf16 on this machine (0: never)."""
    from core.models import cpu_has_native_bf16

    if cpu_has_native_bf16() or bf16_speedup(model, PREFILL_ROWS) >= BF16_PAYS:
        return DEFAULT_BF16_PREFILL_FROM_TOKENS
    return 0


class DtypePolicy:
    """The model (`model`) and, for an fp32 model on the CPU with bf16 enabled, its bf16 copy
    (`bf16_model`); which of the two a batch decodes with and a prompt is prefilled on."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        bf16_from_batch: int | None = None,
        bf16_prefill_from_tokens: int | None = None,
    ):
        import torch

        self.model = model
        self.device: torch.device = next(model.parameters()).device
        # Only an fp32 model on the CPU gets a bf16 copy (a GPU model loads in bf16 already).
        on_cpu_fp32 = model.dtype == torch.float32 and self.device.type == "cpu"
        # Not set: what is faster on this machine (timed here, once, when the CPU lacks native bf16).
        if bf16_from_batch is None:
            bf16_from_batch = default_bf16_from_batch(model) if on_cpu_fp32 else 0
        if bf16_prefill_from_tokens is None:
            bf16_prefill_from_tokens = default_bf16_prefill_from_tokens(model) if on_cpu_fp32 else 0
        self.bf16_from_batch = bf16_from_batch
        self.bf16_prefill_from_tokens = bf16_prefill_from_tokens
        self.bf16_model: PreTrainedModel | None = None
        wants_bf16 = bf16_from_batch > 0 or bf16_prefill_from_tokens > 0
        if wants_bf16 and on_cpu_fp32:
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
