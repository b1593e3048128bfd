"""The distribution installs one top-level name, ``histoedge``, and lists every stage package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = {"histoedge.training": "training", "histoedge.export": "export", "histoedge.serving": "serving"}


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_package_list_matches_the_stage_folders():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"histoedge": "histoedge", **STAGES}
    on_disk = {"histoedge"}
    for name, folder in STAGES.items():
        for init in (REPO_ROOT / folder).rglob("__init__.py"):
            on_disk.add(".".join([name, *init.parent.relative_to(REPO_ROOT / folder).parts]))
    assert set(setuptools["packages"]) == on_disk


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO_ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    return next(out.glob("histoedge-*.whl"))


def test_wheel_installs_only_histoedge(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert archive.read(top_level).decode().split() == ["histoedge"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"histoedge"}
    for module in ("histoedge/cli.py", "histoedge/training/run.py", "histoedge/export/manifest.py",
                   "histoedge/serving/server.py", "histoedge/serving/_proto/inference_pb2.py",
                   "histoedge/serving/status_page.html"):  # package data the REST server reads
        assert module in names
    # Development code stays out of the runtime package.
    assert not any(n.endswith(("testing.py", "proto_gen.py", "generate.py")) for n in names)


def test_python_dash_m_histoedge_runs_the_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "histoedge", "--version"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("histoedge "), result.stderr


def test_stage_folders_are_not_importable_as_top_level_names(tmp_path):
    result = subprocess.run([sys.executable, "-c", "import training"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "No module named 'training'" in result.stderr
