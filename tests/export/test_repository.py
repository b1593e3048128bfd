"""Atomic publication of versions: injected failures, SIGKILL mid-export, stale staging dirs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from histoedge.export.package import ExportOptions, export_run
from histoedge.export.repository import ExportError, VersionWriter, list_versions, remove_stale_staging


def _visible(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if not p.name.startswith("."))


def test_failure_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        with VersionWriter(tmp_path, "m") as staging:
            staging.write_bytes("model.onnx", b"half a model")
            assert staging.path.name.startswith(".tmp-1-")
            raise RuntimeError("disk full")
    assert list((tmp_path / "m").iterdir()) == [tmp_path / "m" / ".lock"] or _visible(tmp_path / "m") == []
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "m").iterdir())
    with VersionWriter(tmp_path, "m") as staging:
        staging.write_text("manifest.json", "{}")
    assert staging.final_path == tmp_path / "m" / "1"
    assert (tmp_path / "m" / "1" / "manifest.json").read_text() == "{}"


def test_keyboard_interrupt_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with VersionWriter(tmp_path, "m", version=3) as staging:
            staging.write_bytes("model.onnx", b"x")
            raise KeyboardInterrupt
    assert list_versions(tmp_path / "m") == []
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_existing_version_and_bad_names_are_refused(tmp_path):
    (tmp_path / "m" / "2").mkdir(parents=True)
    with pytest.raises(ExportError, match="never overwritten"):
        VersionWriter(tmp_path, "m", version=2)
    assert VersionWriter(tmp_path, "m").version == 3
    for bad in ("", "../x", "123", ".hidden", "a/b"):
        with pytest.raises(ExportError):
            VersionWriter(tmp_path, bad)
    with pytest.raises(ExportError):
        VersionWriter(tmp_path, "m", version=0)


def test_version_appearing_during_export_is_not_overwritten(tmp_path):
    with pytest.raises(ExportError, match="appeared"):
        with VersionWriter(tmp_path, "m") as staging:
            staging.write_text("a", "new")
            (tmp_path / "m" / "1").mkdir()  # another exporter won the race (empty dir)
    assert list((tmp_path / "m" / "1").iterdir()) == []


def test_stale_staging_of_dead_process_is_removed_live_one_kept(tmp_path):
    model_dir = tmp_path / "m"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = model_dir / f".tmp-1-{dead.pid}-abcd1234"
    live = model_dir / f".tmp-1-{os.getpid()}-abcd1234"
    stale.mkdir(parents=True)
    live.mkdir()
    assert remove_stale_staging(model_dir) == [stale]
    assert live.is_dir() and not stale.exists()
    assert list_versions(model_dir) == []


def test_sigkill_mid_export_leaves_no_version_and_next_export_succeeds(runs, tmp_path):
    repo = tmp_path / "models"
    command = [str(Path(sys.executable).parent / "histoedge"), "export", "--run", str(runs["stacking"]),
               "--repo", str(repo), "--name", "m"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = []
    deadline = time.monotonic() + 240
    while not staging and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        if (repo / "m").is_dir():
            staging = [p for p in (repo / "m").iterdir() if p.name.startswith(".tmp-")]
    assert staging, "the export never created its staging directory"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert _visible(repo / "m") == []
    assert staging[0].is_dir()  # the killed export's staging dir is still there, hidden
    manifest = export_run(runs["stacking"], repo, "m", options=ExportOptions())
    assert manifest.version == 1
    assert _visible(repo / "m") == ["1"]
    assert not staging[0].exists()  # removed by the next export
