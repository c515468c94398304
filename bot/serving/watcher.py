"""Keeps the engine on the version the store says is active: training runs in another process and
promotes by writing the store, and this notices and swaps (or, at start, falls back to the newest
version that loads)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from bot.serving.contracts import ChatEngine
from core.datadir import DataDir
from core.errors import ModelLoadError
from storage import Store
from storage.vocabulary import BASE_VERSION

log = logging.getLogger(__name__)


class ModelWatcher:
    """Keeps the engine on the store's active version. Training runs in another
    process and promotes by writing the store; this notices and swaps."""

    def __init__(self, engine: ChatEngine, store: Store, data_dir: Path, interval: float = 1.0):
        self.engine = engine
        self.store = store
        self.data_dir = Path(data_dir)
        self.interval = interval
        self.last_error: str | None = None
        # The version this watcher last put into service. Compared with the store, not with
        # engine.version: when this server is another Exemplar's upstream, requests may switch
        # the engine to a loaded LoRA by name, and that is not the watcher's to undo.
        self.serving: str | None = None
        # Set when the active version could not load at start and another one serves in its place.
        self.fallback: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> str:
        """Swap to the store's active version if the engine serves another; return the version served."""
        active = self.store.active_version()
        wanted = active["version"] if active else BASE_VERSION
        if wanted != self.serving:
            try:
                path = DataDir(self.data_dir).resolve(active["path"]) if active else None
                seconds = self.engine.activate(wanted, path)
                self.serving = wanted
                log.info("Swapped to %s in %.2f s", wanted, seconds)
                self.last_error = None
                self.fallback = None
            except ModelLoadError as exc:
                # Keep serving what we have; the admin sees the error in the log.
                if self.last_error != str(exc):
                    log.error("Cannot serve %s: %s", wanted, exc)
                self.last_error = str(exc)
                if self.serving is None:  # at start nothing serves yet: take the newest that loads
                    self._fall_back(wanted, exc)
        return self.engine.version

    def _fall_back(self, wanted: str, error: Exception) -> None:
        """Serve the newest version that loads (or the base model) in place of an active one that cannot."""
        for row in reversed(self.store.list_model_versions()):
            if row["version"] == wanted or row["status"] == "rejected":
                continue
            try:
                self.engine.activate(row["version"], DataDir(self.data_dir).resolve(row["path"]))
            except ModelLoadError:
                continue
            self.serving = row["version"]
            break
        else:
            self.engine.activate(BASE_VERSION, None)
            self.serving = BASE_VERSION
        self.fallback = (
            f"The active version {wanted} cannot load ({error}); serving {self.serving} instead. "
            "Activate a version that loads (or retrain) to clear this."
        )
        log.error("!" * 72 + "\n%s\n" + "!" * 72, self.fallback)

    def resync(self) -> str:
        """Serve the store's active version again, whatever the engine serves now."""
        self.serving = None
        return self.sync()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.sync()
                except Exception:  # a watcher that dies silently would freeze the version
                    log.exception("Model watcher failed; retrying")

        self.sync()
        self._thread = threading.Thread(target=loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
