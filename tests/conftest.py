"""Shared fixtures: the bundled model converted once per machine, a tiny Llama
built from a config, in-memory stores, and a fake engine with canned replies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.live_app import REPO, LiveServer  # noqa: E402

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
def tokenizer():
    """The real SmolLM2 tokenizer, with its chat template, without converting the model's weights.

    The quick tests need only the tokenizer (their models are tiny ones built
    from a config), so it comes from the converted checkpoint when one exists and
    otherwise from the GGUF's metadata (about 12 s once; then cached, 3.5 MB).
    """
    from transformers import AutoTokenizer

    from core.models import bundled_gguf_path, converted_dir

    checkpoint = converted_dir(CACHE)
    if (checkpoint / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(checkpoint)
    folder = CACHE / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        gguf = bundled_gguf_path()
        partial = CACHE / f".tokenizer-{os.getpid()}"
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(partial)
        try:
            partial.rename(folder)  # atomic; another session may have won the race
        except OSError:
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return AutoTokenizer.from_pretrained(folder)


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
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama with random weights and the real tokenizer (chat template included), saved to a
    folder: a --base-model for servers and training processes that must start in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def real_engine(bundled_data_dir: Path):
    """The bundled SmolLM2-135M-Instruct in an Engine, loaded once per session."""
    from bot.serving.engine import Engine

    return Engine.load(None, bundled_data_dir)


@pytest.fixture
def store():
    from storage import Store

    s = Store(":memory:")
    yield s
    s.close()


@pytest.fixture
def live_server_factory(tmp_path, bundled_checkpoint):
    """Start real servers with the bundled model: factory(*extra_flags, data_dir=None)."""
    servers = []

    def start(*extra: str, data_dir: Path | None = None) -> LiveServer:
        server = LiveServer(data_dir or tmp_path / f"data{len(servers)}", bundled_checkpoint, *extra)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"]
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        yield instance
        instance.close()
