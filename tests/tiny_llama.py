"""The tiny Llama the fast tests use in place of the real model: two layers, random weights
(seeded), and the real tokenizer's vocabulary and special tokens, so prompts render and
encode exactly as for the bundled model."""

from __future__ import annotations

from typing import Any


def tiny_llama(tokenizer: Any, **overrides: Any) -> Any:
    """A LlamaForCausalLM in eval mode, seeded: the same weights for the same settings;
    `overrides` change LlamaConfig fields (a longer context, wider layers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **overrides})).eval()
