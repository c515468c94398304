"""Backups of a data dir: the database (a consistent copy, taken while the server
runs) and the trained adapters. `launch.py backup` and `launch.py restore` call these.

A backup is a folder:

    DEST/exemplar.db       the database, one file (SQLite's backup API, integrity-checked)
    DEST/adapters/v1, …    every finished adapter version
    DEST/backup.json       when, from where, and what it holds

Converted base models are not copied: they are made again from the base model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.datadir import DataDir
from core.errors import ConflictError, NotFoundError
from storage import Store
from storage.files import check_file, count_rows, ensure_unused

MANIFEST = "backup.json"
TMP_PREFIX = ".tmp-"  # the adapter registry's temporary folders: unfinished, never copied


def backup_data_dir(data_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy the data dir's database, then its finished adapters, into the new folder `dest`; return the manifest.

    The database comes first: an adapter folder is renamed into place before its version is
    recorded, so every version the copied database names already has its folder.
    """
    source, dest = DataDir(data_dir), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ConflictError(f"{dest} is not empty: back up to a new folder")
    store = Store(source.existing_db())
    try:
        dest.mkdir(parents=True, exist_ok=True)
        store.backup(DataDir(dest).db)
    finally:
        store.close()
    copied = []
    if source.adapters.is_dir():
        for folder in sorted(source.adapters.iterdir()):
            if folder.is_dir() and not folder.name.startswith(TMP_PREFIX):
                shutil.copytree(folder, DataDir(dest).adapters / folder.name)
                copied.append(folder.name)
    counts = count_rows(DataDir(dest).db)
    manifest = {"source": str(source.root.resolve()), "adapters": copied, **counts}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def restore_data_dir(src: str | Path, data_dir: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Bring the backup `src` back into `data_dir`; return its manifest.

    Refuses while any process (a server, a training job) has the data dir's database open,
    and refuses to replace an existing database unless `force`.
    """
    backup, target = DataDir(src), DataDir(data_dir)
    if not backup.db.is_file():
        raise NotFoundError(f"{src} is not a backup: it has no {backup.db.name}")
    if check_file(backup.db) != "ok":
        raise ConflictError(f"the backup's database in {src} fails SQLite's integrity check; nothing was restored")
    if target.db.exists():
        if not force:
            raise ConflictError(f"{target.db} exists: pass --force to replace it with the backup")
        ensure_unused(target.db)
    target.root.mkdir(parents=True, exist_ok=True)
    part = target.db.with_name(f".{target.db.name}.part")
    shutil.copyfile(backup.db, part)
    for suffix in ("-wal", "-shm"):  # the old database's journal must not be applied to the restored one
        Path(f"{target.db}{suffix}").unlink(missing_ok=True)
    os.replace(part, target.db)

    if backup.adapters.is_dir():
        staged = target.root / f"{TMP_PREFIX}adapters"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(backup.adapters, staged)
        old = target.root / f"{TMP_PREFIX}adapters-old"
        if target.adapters.exists():
            os.replace(target.adapters, old)
        os.replace(staged, target.adapters)
        shutil.rmtree(old, ignore_errors=True)
    # Versions record their adapter's absolute path: point them at the restored folders.
    store = Store(target.db)
    try:
        for version in store.list_model_versions():
            folder = target.adapters / version["version"]
            if folder.is_dir():
                store.update_model_version(version["version"], path=str(folder.resolve()))
    finally:
        store.close()
    manifest_path = Path(src) / MANIFEST
    return json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else count_rows(target.db)
