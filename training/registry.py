"""Adapter versions on disk: data_dir/adapters/v1, v2, … each a complete peft adapter folder.

A version folder appears only when it is complete: the adapter is written to
a temporary folder beside it and renamed into place, and the database record
follows the rename. Anything else found there (a temporary folder, or a
version folder without a record) is left over from a process that died, and
clean_leftovers() removes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from core.errors import ModelLoadError
from storage import Store

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
# sha256 of every file of an adapter, written into its folder before the rename and checked at activation.
CHECKSUMS = "checksums.json"


def new_temp_dir(data_dir: str | Path) -> Path:
    """An empty temporary folder on the same file system as the versions, so the rename is atomic."""
    root = DataDir(data_dir).adapters
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))


def clean_leftovers(store: Store, data_dir: str | Path) -> list[str]:
    """Remove temporary folders and version folders that have no database record; return their names.

    Call it only while no training job runs (one could be writing a temporary folder).
    """
    root = DataDir(data_dir).adapters
    if not root.is_dir():
        return []
    known = {v["version"] for v in store.list_model_versions()}
    removed = []
    for path in root.iterdir():
        if path.is_dir() and (path.name.startswith(TMP_PREFIX) or path.name not in known):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("Removed leftovers of interrupted training runs: %s", ", ".join(sorted(removed)))
    return removed


def commit_version(store: Store, data_dir: str | Path, temp_dir: Path, **fields: Any) -> dict[str, Any]:
    """Rename a complete adapter folder into place as the next version and record it; return the record.

    `fields` go into the model_versions row (parent_version, base_model, metrics, …).
    """
    write_checksums(temp_dir)
    version = store.next_version_name()
    target = DataDir(data_dir).adapters / version
    if target.exists():  # left over by a process that died between rename and record
        shutil.rmtree(target)
    os.replace(temp_dir, target)
    try:
        return store.add_model_version(version, path=str(target.resolve()), **fields)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def adapter_path(version_row: dict[str, Any]) -> Path:
    """The folder of a version's adapter (the record holds its absolute path)."""
    return Path(version_row["path"])


def adapter_exists(version_row: dict[str, Any]) -> bool:
    return (adapter_path(version_row) / "adapter_config.json").is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: Path) -> dict[str, str]:
    """Record the sha256 of each file in an adapter folder (in the folder itself, so it moves with it)."""
    sums = {p.name: _sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (Path(folder) / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    return sums


def verify_files(folder: str | Path, version: str) -> None:
    """Check an adapter folder before it serves: its config, its weights readable to the last byte,
    and (when recorded) every file's sha256. Raise ModelLoadError saying what is wrong."""
    folder = Path(folder)
    config = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise ModelLoadError(f"Adapter {version} is incomplete at {folder}: retrain it, or activate another version")
    try:
        json.loads(config.read_text())
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():
                tensors.get_tensor(key)
    except Exception as exc:  # json and safetensors raise their own error types for damaged files
        raise ModelLoadError(f"Adapter {version} at {folder} is damaged and cannot load: {exc}") from exc
    recorded = folder / CHECKSUMS
    if recorded.is_file():
        try:
            expected = json.loads(recorded.read_text())
        except ValueError as exc:
            raise ModelLoadError(f"Adapter {version}: {CHECKSUMS} is damaged ({exc})") from exc
        for name, digest in expected.items():
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise ModelLoadError(
                    f"Adapter {version}: {name} does not match the checksum recorded when it was trained "
                    "(the file changed or is missing); retrain it, or activate another version"
                )
