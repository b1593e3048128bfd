"""`histoedge export verify`, the export command line, and tampered packages."""

from __future__ import annotations

import shutil

import histoedge.cli
from histoedge.export.verify import verify_version


def test_verify_passes_on_a_fresh_export(exported, capsys):
    report = verify_version(exported)
    assert report.ok, report.summary()
    assert histoedge.cli.main(["export", "verify", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "sha256" in out and out.strip().endswith("OK")


def test_verify_detects_a_flipped_byte(exported, tmp_path, capsys):
    copy = tmp_path / "breast" / "1"
    shutil.copytree(exported, copy)
    model = copy / "model.onnx"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    model.write_bytes(bytes(raw))
    report = verify_version(copy)
    assert not report.ok
    assert ("sha256", False) in [(name, passed) for name, passed, _ in report.checks]
    assert histoedge.cli.main(["export", "verify", str(copy)]) == 1
    assert "FAIL sha256" in capsys.readouterr().out


def test_verify_detects_a_manifest_that_lies_about_shapes(exported, tmp_path):
    copy = tmp_path / "breast" / "1"
    shutil.copytree(exported, copy)
    manifest = (copy / "manifest.json").read_text().replace('"FP32"', '"FP16"', 1)
    (copy / "manifest.json").write_text(manifest)
    report = verify_version(copy)
    assert not report.ok
    assert any(not passed and name.startswith("output") for name, passed, _ in report.checks)


def test_verify_of_missing_dir_is_a_one_line_error(tmp_path, capsys):
    assert histoedge.cli.main(["export", "verify", str(tmp_path / "nope")]) == 2
    assert "has no model.onnx" in capsys.readouterr().err


def test_cli_export_run_and_usage_errors(runs, tmp_path, capsys):
    repo = tmp_path / "models"
    assert histoedge.cli.main(["export", "--run", str(runs["single"]), "--repo", str(repo),
                           "--name", "cli"]) == 0
    assert "exported" in capsys.readouterr().out
    assert (repo / "cli" / "1" / "manifest.json").is_file()
    assert histoedge.cli.main(["export", "--run", str(runs["single"]), "--repo", str(repo),
                           "--name", "cli", "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert histoedge.cli.main(["export", "--repo", str(repo), "--name", "x"]) == 2
    assert "exactly one of --run" in capsys.readouterr().err
