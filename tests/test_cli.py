"""The ``histoedge`` dispatcher: help, errors, and which stages each subcommand imports."""

import json
import subprocess
import sys

import pytest

import histoedge.cli


def _modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the names in ``sys.modules`` afterwards."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        histoedge.cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("data", "train", "report", "export", "serve", "classify", "health", "demo"):
        assert command in text


def test_help_imports_no_heavy_framework():
    modules = _modules_after(
        "import histoedge.cli, contextlib, io\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    histoedge.cli.main(['--help'])")
    assert "histoedge" in modules
    for heavy in ("tensorflow", "keras", "tf2onnx", "onnxruntime", "grpc", "sklearn"):
        assert heavy not in modules, f"histoedge --help imported {heavy}"


def test_user_error_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "histoedge", "train", "--data", str(tmp_path / "missing"),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("histoedge train: error:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
