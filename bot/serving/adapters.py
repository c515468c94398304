"""LoRA adapters, served merged into the base weights: reading one as peft saved it (its config
and weights through peft's own loaders, its rank and alpha patterns matched to modules by peft's
own rule) and swapping it into the weights in place.

Merged, an adapter costs nothing per token (no LoRA product beside every linear layer). The base
weights a merge touches are kept untouched aside, and every swap first copies them back, so the
base never drifts however often it swaps; the bf16 copy of the weights is rewritten from the
merged fp32 weights, so it cannot drift either.

What cannot be merged exactly is refused with a ModelLoadError that says why: other peft methods,
LoRA variants (DoRA and the like), modules_to_save, LoRA on embedding or convolution layers, a
LoRA bias on a layer without a bias, weights this reader does not know, shapes that do not fit.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel

_SAVED_PREFIX = "base_model.model."  # peft's prefix on every saved key
# Settings that make an adapter something other than plain LoRA on the model's own modules (peft
# marks its LoRA variants itself: see _unmergeable_settings).
_NOT_PLAIN = ("modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices", "use_qalora")


@dataclass(frozen=True)
class LayerDelta:
    """What a merged adapter adds to one layer: to its weight (shaped like it), and with peft's
    `lora_bias=True` to its bias."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None

    def is_finite(self) -> bool:
        import torch

        return bool(torch.isfinite(self.weight).all()) and (self.bias is None or bool(torch.isfinite(self.bias).all()))


def _unmergeable_settings(config: LoraConfig) -> list[str]:
    """The settings of `config` that this engine cannot merge into plain weights."""
    found = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name, None)
        if field.metadata.get("is_lora_variant") and value:
            found.append(field.name)
        elif field.name == "init_lora_weights" and value in field.metadata.get("lora_variants", ()):
            found.append(f"init_lora_weights={value!r}")
    return found + [name for name in _NOT_PLAIN if getattr(config, name, None)]


def _load(path: Path, version: str) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The adapter's config and weights, from local files only (peft would look on the hub for missing ones)."""
    from peft import LoraConfig, PeftType
    from peft.utils import load_peft_weights

    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"Adapter for {version} not found at {path}: retrain, or activate another version")
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelLoadError(
            f"Adapter for {version} not found at {path}: adapter_config.json is there but not adapter_model.safetensors; "
            "retrain, or activate another version"
        )
    try:
        config = LoraConfig.from_pretrained(str(path))
        tensors = load_peft_weights(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise ModelLoadError(f"Adapter {version} at {path} does not load: {exc}") from exc
    # LoraConfig.from_pretrained hands back the config class the file names (IA3Config, AdaLoraConfig, ...).
    if config.peft_type != PeftType.LORA:
        raise ModelLoadError(
            f"Adapter {version} at {path} is a {config.peft_type} adapter, not LoRA; this engine merges only LoRA adapters"
        )
    settings = _unmergeable_settings(config)
    if settings:
        raise ModelLoadError(
            f"Adapter {version} at {path} is not a plain LoRA adapter ({', '.join(settings)}); this engine merges "
            "only those: retrain without them"
        )
    return config, tensors


def read_adapter(model: PreTrainedModel, adapter_path: str | Path, *, version: str, base_name: str) -> dict[str, LayerDelta]:
    """The change a LoRA adapter makes to `model`, per layer: {module name: LayerDelta}.

    Each layer's scale is peft's: alpha / r (alpha / sqrt(r) with use_rslora), with r and alpha
    from rank_pattern and alpha_pattern where a pattern matches the module's full name as peft
    matches it. Raises ModelLoadError when the files are missing, unreadable, of a kind this
    engine cannot merge, or do not fit `model`.
    """
    import torch
    from peft.utils.other import get_pattern_key
    from transformers.pytorch_utils import Conv1D

    path = Path(adapter_path or "")
    config, tensors = _load(path, version)
    where = f"Adapter {version} at {path}"
    embedding = next((key for key in tensors if ".lora_embedding_" in key), None)
    if embedding is not None:  # (peft saves the whole embedding layer beside it: say why, not what)
        raise ModelLoadError(f"{where} trains an embedding layer ({embedding}); this engine merges LoRA on linear layers only")
    parts: dict[str, dict[str, torch.Tensor]] = {}  # module name -> {"lora_A.weight": ..., "lora_B.weight": ..., ...}
    for key, tensor in tensors.items():
        stem, _, kind = key.removeprefix(_SAVED_PREFIX).rpartition(".lora_")
        if not stem or kind not in ("A.weight", "B.weight", "B.bias"):
            raise ModelLoadError(f"{where} has weights this engine cannot merge: {key}")
        parts.setdefault(stem, {})["lora_" + kind] = tensor
    rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
    modules = dict(model.named_modules())
    deltas: dict[str, LayerDelta] = {}
    for name, part in parts.items():
        a, b, b_bias = part.get("lora_A.weight"), part.get("lora_B.weight"), part.get("lora_B.bias")
        if a is None or b is None:
            raise ModelLoadError(f"{where} is incomplete: {name} lacks its {'lora_A' if a is None else 'lora_B'} weight")
        module = modules.get(name)
        if module is None:
            raise ModelLoadError(f"{where} does not fit {base_name}: no module {name}")
        if not isinstance(module, torch.nn.Linear | Conv1D):
            raise ModelLoadError(
                f"{where} does not fit {base_name}: {name} is a {type(module).__name__}; this engine merges LoRA "
                "on linear layers only"
            )
        # peft's rule: a pattern key matches a module whose full name ends with it (at a dot).
        rank = int(rank_pattern.get(get_pattern_key(list(rank_pattern), name), config.r))
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), name), config.lora_alpha))
        if a.shape[0] != rank or b.shape[-1] != rank:
            raise ModelLoadError(
                f"{where} does not load: its config gives {name} rank {rank}, its weights have rank "
                f"{a.shape[0]}; retrain it"
            )
        scale = alpha / (rank**0.5 if config.use_rslora else rank)
        delta = (b.float() @ a.float()) * scale
        # transformers' Conv1D keeps its weight as (in, out): peft transposes for it whatever
        # fan_in_fan_out the config says (and never for nn.Linear), and so does this.
        if isinstance(module, Conv1D):
            delta = delta.T
        if delta.shape != module.weight.shape:
            raise ModelLoadError(
                f"{where} does not fit {base_name}: {name} is "
                f"{tuple(module.weight.shape)}, the adapter makes {tuple(delta.shape)}"
            )
        bias = None
        if b_bias is not None:
            if module.bias is None:
                raise ModelLoadError(
                    f"{where} cannot be merged into {base_name}: it trains a bias for {name} (lora_bias=True), "
                    "and that layer has no bias to add it to; retrain with lora_bias=False"
                )
            bias = b_bias.float() * scale
            if bias.shape != module.bias.shape:
                raise ModelLoadError(
                    f"{where} does not fit {base_name}: {name}'s bias is {tuple(module.bias.shape)}, "
                    f"the adapter makes {tuple(bias.shape)}"
                )
        deltas[name] = LayerDelta(delta, bias)
    if not deltas:
        raise ModelLoadError(f"{where} holds no LoRA weights")
    return deltas


class AdapterSwap:
    """The served weights with at most one adapter merged in place: `model`'s own, and every copy
    of them in `copies` (the bf16 copy), which are rewritten from `model` after each merge."""

    def __init__(self, model: PreTrainedModel, copies: Sequence[PreTrainedModel] = ()):
        self.model = model
        self.copies = list(copies)
        self._originals: dict[str, torch.Tensor] = {}  # parameter name -> its base value, for each one touched
        self._lock = threading.Lock()

    def merge(self, deltas: Mapping[str, LayerDelta]) -> None:
        """Put the base weights back, then add `deltas` (an empty mapping leaves the plain base).

        The caller makes sure no forward pass runs meanwhile (the scheduler's hold())."""
        import torch

        changes: dict[str, torch.Tensor] = {}
        for name, delta in deltas.items():
            changes[f"{name}.weight"] = delta.weight
            if delta.bias is not None:
                changes[f"{name}.bias"] = delta.bias
        with self._lock, torch.no_grad():
            for name, original in self._originals.items():
                self.model.get_parameter(name).copy_(original)
            for name, change in changes.items():
                parameter = self.model.get_parameter(name)
                if name not in self._originals:
                    self._originals[name] = parameter.detach().clone()
                parameter.add_(change.to(parameter.dtype))
            for copy in self.copies:
                for name in self._originals:
                    copy.get_parameter(name).copy_(self.model.get_parameter(name))

