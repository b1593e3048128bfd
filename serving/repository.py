"""The model repository on disk and the registry of loaded model versions.

Layout: ``MODELS/<name>/<version>/{model.onnx,manifest.json}``.  Only version
folders count (:func:`histoedge.export.manifest.parse_version`); folders starting
with "." are exports in progress; anything else is logged once and skipped.

The registry loads every version it finds, serves the highest by default, and
rescans on :meth:`ModelRegistry.refresh` (called by a polling thread and on
SIGHUP).  A new version is verified, loaded and warmed up before it is put in
place with one assignment, so requests never see a half-loaded model; a version
that fails to load is logged once (until its files change) and the previous one
keeps serving.

Example::

    registry = ModelRegistry(ModelRepository(Path("models")), loader)
    registry.refresh()
    model = registry.get("breast")          # highest version
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from histoedge.export.manifest import MANIFEST_FILE, MODEL_FILE, parse_version, version_folders
from histoedge.serving.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError
from histoedge.serving.runtime import ModelLoadError, ModelVersion
from histoedge.serving.untrusted import client_text

log = logging.getLogger(__name__)


class ModelRepository:
    """Reads the folder layout of a model repository."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._skipped: set[Path] = set()

    def scan(self) -> dict[str, dict[int, Path]]:
        """Model name -> version -> folder, for every model folder with a version folder."""
        found: dict[str, dict[int, Path]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            versions = version_folders(model_dir)
            published = set(versions.values())
            for folder in model_dir.iterdir():
                if folder not in published and not folder.name.startswith(".") and folder.is_dir():
                    self._skip(folder)
            if versions:  # a folder without versions is not a model (yet)
                found[model_dir.name] = versions
        return found

    def _skip(self, folder: Path) -> None:
        if folder not in self._skipped:
            self._skipped.add(folder)
            log.warning("skipping %s/%s: not a version folder (a positive number in ASCII digits, "
                        "no leading zeros)", client_text(folder.parent.name), client_text(folder.name))


def _signature(path: Path) -> tuple:
    """Changes when the version's files change, so a fixed version is retried."""
    parts = []
    for name in (MANIFEST_FILE, MODEL_FILE):
        try:
            stat = (path / name).stat()
            parts.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            parts.append(None)
    return tuple(parts)


class ModelRegistry:
    """Loaded model versions, swapped atomically as the repository changes.

    Args:
        repository: where to look.
        loader: loads and warms up one version folder (raises ModelLoadError).
        on_change: called after every refresh that changed what is served.
    """

    def __init__(self, repository: ModelRepository, loader: Callable[[Path], ModelVersion],
                 on_change: Callable[[], None] | None = None) -> None:
        self.repository = repository
        self._loader = loader
        self._on_change = on_change
        self._models: dict[str, dict[int, ModelVersion]] = {}  # replaced, never mutated
        self._known: tuple[str, ...] = ()
        self._failed: dict[Path, tuple] = {}
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- reading -------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Every model folder in the repository, loaded or not."""
        return self._known

    def versions(self, name: str) -> tuple[int, ...]:
        return tuple(sorted(self._models.get(name, {})))

    def resolve_name(self, name: str) -> str:
        if name:
            return name
        if len(self._known) == 1:
            return self._known[0]
        raise InvalidInputError(
            f"a model name is required; this server serves {', '.join(self._known) or 'no models'}")

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The model version to use; the highest when ``version`` is empty."""
        name = self.resolve_name(name)
        loaded = self._models.get(name)
        if loaded is None:
            if name in self._known:
                raise ModelNotReadyError(f"model '{name}' has no loadable version yet")
            raise ModelNotFoundError(
                f"unknown model '{client_text(name)}'; this server serves "
                f"{', '.join(self._known) or 'no models'}")
        if not version:
            return loaded[max(loaded)]
        number = parse_version(version)
        if number is None:
            raise InvalidInputError(
                f"model version '{client_text(version)}' is not a version number (ASCII digits, at least 1)")
        if number not in loaded:
            raise ModelNotFoundError(
                f"model '{name}' has no version '{client_text(version)}'; loaded versions: "
                f"{', '.join(map(str, sorted(loaded)))}")
        return loaded[number]

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFoundError, ModelNotReadyError, InvalidInputError):
            return False
        return True

    def all_ready(self) -> bool:
        """True when every model folder has a loaded version (and there is at least one)."""
        return bool(self._known) and all(name in self._models for name in self._known)

    # --- changing ------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load new versions and drop removed ones; return True if anything changed."""
        with self._refresh_lock:
            found = self.repository.scan()
            current = self._models
            changed = tuple(found) != self._known
            updated = {name: dict(versions) for name, versions in current.items()}
            for name, versions in found.items():
                for number in sorted(versions, reverse=True):  # newest first: serve it soonest
                    if number in current.get(name, {}):
                        continue
                    model = self._try_load(versions[number])
                    if model is not None:
                        updated.setdefault(name, {})[number] = model
                        self._models = {n: dict(v) for n, v in updated.items()}  # atomic swap
                        changed = True
            removed = [(name, number) for name, versions in updated.items()
                       for number in list(versions) if number not in found.get(name, {})]
            retired = [updated[name].pop(number) for name, number in removed]
            self._models = {name: versions for name, versions in updated.items() if versions}
            self._known = tuple(found)
            for model in retired:
                log.info("unloaded model %s version %d (removed from the repository)", model.name, model.version)
                model.close()
            changed = changed or bool(retired)
        if changed and self._on_change is not None:
            self._on_change()
        return changed

    def _try_load(self, path: Path) -> ModelVersion | None:
        signature = _signature(path)
        if self._failed.get(path) == signature:
            return None
        try:
            model = self._loader(path)
        except ModelLoadError as error:
            self._failed[path] = signature
            log.error("cannot load model %s version %s, keeping the previous one: %s",
                      path.parent.name, path.name, error)
            return None
        self._failed.pop(path, None)
        return model

    def rescan_soon(self) -> None:
        """Ask the watcher thread to rescan now (safe to call from a signal handler)."""
        self._wake.set()

    def start_watching(self, poll_seconds: float) -> None:
        """Rescan every ``poll_seconds`` (0: only when :meth:`rescan_soon` is called)."""
        def watch() -> None:
            while not self._stop.is_set():
                self._wake.wait(poll_seconds or None)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - the watcher must survive a bad scan
                    log.exception("repository rescan failed")

        self._watcher = threading.Thread(target=watch, name="repository-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching and unload every model (finishing queued requests)."""
        self._stop.set()
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(5)
        with self._refresh_lock:
            models, self._models = self._models, {}
        for versions in models.values():
            for model in versions.values():
                model.close()
