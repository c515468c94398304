"""The layout of a data dir: every path inside it is named here and nowhere else.

    DATA_DIR/exemplar.db              the database (storage.Store)
    DATA_DIR/base/<model>/            converted base models (core/models.py)
    DATA_DIR/adapters/v1, v2, …       trained LoRA adapters (training/registry.py)
    DATA_DIR/logs/job-<id>.log        each training job's log (training/worker.py)

The server, the CLI, the training worker and the registry all take a DataDir
(or build one from --data-dir), so moving a file means changing one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    """Paths inside one data dir; nothing is created until a caller writes there."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def db(self) -> Path:
        return self.root / "exemplar.db"

    def existing_db(self) -> Path:
        """The database, which must already exist: commands that read a data dir (train, eval,
        export, models) would otherwise create an empty one at a mistyped --data-dir."""
        if not self.db.is_file():
            from core.errors import NotFoundError

            raise NotFoundError(
                f"There is no Exemplar database in {self.root} (no {self.db.name}): check --data-dir "
                "(or EXEMPLAR_DATA_DIR); `serve` or `import` creates one"
            )
        return self.db

    def writable_db(self) -> Path:
        """The database for a command that may create the data dir (import): refused with a
        message, not a traceback, when the path cannot be a folder (a file, or under one)."""
        from core.errors import ValidationError

        for folder in (self.root, *self.root.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise ValidationError(f"--data-dir {self.root} cannot be a folder: {folder} is a file")
                break
        return self.db

    @property
    def base(self) -> Path:
        """Where base models converted for this data dir live (one folder per model)."""
        return self.root / "base"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def job_log(self, job_id: int) -> Path:
        return self.logs / f"job-{job_id}.log"

    def resolve(self, path: str | Path) -> Path:
        """A path stored relative to the data dir (or absolute) as an absolute-or-rooted path."""
        path = Path(path)
        return path if path.is_absolute() else self.root / path
