"""A LoRA adapter shaped like the default training recipe's, without training one: for the
benchmarks that serve an adapter or swap between adapters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.models import BaseModelRef


def save_recipe_shaped_adapter(ref: BaseModelRef, folder: Path, seed: int) -> None:
    """Save to `folder` a LoRA with the default TrainConfig's shape on the base model `ref`."""
    import torch

    from core.models import load_base_model
    from training.config import TrainConfig
    from training.finetune import add_lora

    model, _ = load_base_model(ref, device="cpu")
    torch.manual_seed(seed)
    peft_model = add_lora(model, TrainConfig())
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero; non-zero, the adapter changes the answers as a trained one does
            torch.nn.init.normal_(param, std=1e-3)
    peft_model.save_pretrained(folder)
