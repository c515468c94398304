"""Shared fixtures: the bundled model converted once per machine, a tiny Llama
built from a config, in-memory stores, and a fake engine with canned replies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
# The bundled GGUF takes ~25 s to dequantise; tests share one converted copy.
CACHE = Path(os.environ.get("EXEMPLAR_TEST_CACHE", REPO / ".cache" / "test-data"))


@pytest.fixture(scope="session")
def bundled_data_dir() -> Path:
    """A data dir holding the converted bundled model (shared by the tests; treat the model as read-only)."""
    from core.models import ensure_bundled_checkpoint

    ensure_bundled_checkpoint(CACHE)
    return CACHE


@pytest.fixture(scope="session")
def bundled_checkpoint(bundled_data_dir: Path) -> Path:
    from core.models import converted_dir

    return converted_dir(bundled_data_dir)


@pytest.fixture(scope="session")
def tokenizer(bundled_checkpoint: Path):
    """The real SmolLM2 tokenizer, with its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_checkpoint)


@pytest.fixture
def tiny_model(tokenizer):
    """A 2-layer Llama with random weights and the real tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
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
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def real_engine(bundled_data_dir: Path):
    """The bundled SmolLM2-135M-Instruct in an Engine, loaded once per session."""
    from bot.engine import Engine

    return Engine.load(None, bundled_data_dir)


@pytest.fixture
def store():
    from storage import Store

    s = Store(":memory:")
    yield s
    s.close()
