"""The versioned model repository: ``MODELS/<name>/<version>/{model.onnx, manifest.json}``.

A version appears all at once or not at all. It is built in a hidden staging
directory inside ``MODELS/<name>/`` (``.tmp-<version>-<pid>-<random>``, which
readers ignore: see :func:`histoedge.export.manifest.parse_version`), every file and the
directory are fsynced, and the directory is renamed to its final name. A crash
or Ctrl-C leaves at most a hidden staging directory, which the next export of
that name removes once the process that made it is gone.

Only the standard library is used here.

Example::

    with VersionWriter(Path("models"), "breast", version=None) as staging:
        (staging.path / "model.onnx").write_bytes(data)
        staging.write_text("manifest.json", manifest.to_json())
    print(staging.final_path)          # models/breast/1
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from histoedge.export.errors import ExportError
from histoedge.export.manifest import version_folders

log = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-"
LOCK_FILE = ".lock"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STAGING_PATTERN = re.compile(r"^\.tmp-[0-9]+-([0-9]+)-[0-9a-f]+$")


def list_versions(model_dir: Path) -> list[int]:
    """Sorted published versions of one model (version folders only)."""
    return list(version_folders(model_dir))


def next_version(model_dir: Path) -> int:
    """One more than the highest published version, or 1."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def check_name(name: str) -> str:
    """Return ``name`` if it is usable as a model folder name, else raise :class:`ExportError`."""
    if not _NAME_PATTERN.match(name or "") or name.isdigit():
        raise ExportError(
            f"model name {name!r} must start with a letter or digit, contain only letters, "
            "digits, '_', '-', '.', and not be all digits")
    return name


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(model_dir: Path) -> list[Path]:
    """Delete staging directories whose process has died; return what was removed."""
    removed = []
    if not Path(model_dir).is_dir():
        return removed
    for path in Path(model_dir).iterdir():
        match = _STAGING_PATTERN.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            log.info("removed stale staging directory %s", path)
    return removed


@contextlib.contextmanager
def _locked(model_dir: Path):
    """Serialise commits of one model name between processes."""
    with open(Path(model_dir) / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class VersionWriter:
    """Context manager that stages one version and publishes it atomically on success.

    Args:
        repo: repository root (created if missing).
        name: model name (folder under ``repo``).
        version: version to write; ``None`` picks the next integer.

    The staging directory is ``self.path``; on a clean exit of the ``with`` block
    it is renamed to ``self.final_path``. On any exception it is deleted and no
    version appears. An existing version is never overwritten.
    """

    def __init__(self, repo: Path, name: str, version: int | None = None):
        self.model_dir = Path(repo) / check_name(name)
        remove_stale_staging(self.model_dir)
        if version is None:
            version = next_version(self.model_dir)
        if int(version) < 1:
            raise ExportError(f"version must be a positive integer, got {version}")
        self.version = int(version)
        self.final_path = self.model_dir / str(self.version)
        if self.final_path.exists():
            raise ExportError(
                f"{self.final_path} already exists; versions are never overwritten "
                "(choose another --version or leave it out for the next one)")
        self.path: Path | None = None

    def __enter__(self) -> "VersionWriter":
        self.model_dir.mkdir(parents=True, exist_ok=True)
        name = f"{STAGING_PREFIX}{self.version}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.model_dir / name
        self.path.mkdir()
        return self

    def write_bytes(self, filename: str, data: bytes) -> Path:
        """Write one file into the staging directory and fsync it."""
        target = self.path / filename
        with open(target, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return target

    def write_text(self, filename: str, text: str) -> Path:
        return self.write_bytes(filename, text.encode("utf-8"))

    def commit(self) -> Path:
        """fsync everything and rename the staging directory to the final version."""
        for child in self.path.iterdir():
            if child.is_file():
                fsync_path(child)
        fsync_path(self.path)
        with _locked(self.model_dir):
            # rename(2) silently replaces an empty directory, so check under the lock.
            if self.final_path.exists():
                raise ExportError(f"{self.final_path} appeared during the export; not overwritten")
            os.rename(self.path, self.final_path)
        fsync_path(self.model_dir)
        self.path = self.final_path
        return self.final_path

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
                return False
            except BaseException:
                self._discard()
                raise
        self._discard()
        return False

    def _discard(self) -> None:
        if self.path is not None and self.path != self.final_path:
            shutil.rmtree(self.path, ignore_errors=True)
