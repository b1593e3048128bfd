"""The model package contract: version folders, the manifest builder, ensemble.json, tensor names."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histoedge.export import manifest as contract
from histoedge.export.ensemble_spec import EnsembleSpec
from histoedge.export.errors import EnsembleSpecError, ExportError
from histoedge.export.manifest import Manifest, build_manifest, parse_version, version_folders

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,number", [("1", 1), ("12", 12), ("9" * 18, int("9" * 18))])
def test_version_folders_are_ascii_integers(name, number):
    assert parse_version(name) == number


@pytest.mark.parametrize("name", ["0", "007", "-1", "+1", " 1", "1 ", "1.0", "1e3", "", "latest", ".tmp-3-99",
                                  "\u00b2", "\u2460", "\u0661", "1\u0661", "\uff11", "1" * 19, "3\n"])
def test_anything_else_is_not_a_version(name):
    assert parse_version(name) is None


def test_version_folders_lists_directories_only_in_order(tmp_path):
    for name in ("10", "2", "\u0663", "04", ".tmp-5-1-ab"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file is not a version")
    assert version_folders(tmp_path) == {2: tmp_path / "2", 10: tmp_path / "10"}
    assert version_folders(tmp_path / "missing") == {}


def test_build_manifest_follows_the_tensor_contract():
    manifest = build_manifest(name="m", version=3, image_size=32, classes=("a", "b", "c"),
                              members=("x", "y"), sha256="0" * 64)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs + manifest.outputs] == [
        (contract.IMAGE, "UINT8", (-1, 32, 32, 3)), (contract.PROBABILITIES, "FP32", (-1, 3)),
        (contract.MEMBER_PROBABILITIES, "FP32", (-1, 2, 3))]
    assert manifest.image_size == (32, 32) and manifest.toolkit_version


def _stacking(n_classes=2, multi_class=None):
    rows = 1 if n_classes == 2 else n_classes
    stacking = {"coef": [[0.5, -0.25, 1.0, 2.0, -1.0, 0.0][:2 * n_classes]] * rows,
                "intercept": [0.1] * rows}
    if multi_class:
        stacking["multi_class"] = multi_class
    return {"method": "stacking", "members": ["a", "b"], "classes": ["n", "p", "q"][:n_classes],
            "image_size": 32, "stacking": stacking}


@pytest.mark.parametrize("change,match", [
    ({"method": "boosting"}, "not one of"),
    ({"image_size": "big"}, "malformed"),
    ({"members": []}, ">= 1 member"),
    ({"positive_class": 2}, "not a class index"),
    ({"stacking": {"coef": [[1.0, 2.0]], "intercept": [0.0]}}, "do not fit"),
    ({"stacking": {"coef": [[1.0, "x", 0.0, 0.0]], "intercept": [0.0]}}, "must be numbers"),
    ({"stacking": {**_stacking()["stacking"], "multi_class": "multinomial"}}, "does not fit 2 classes"),
    ({"method": "soft_vote", "soft_vote": {"weights": [1.0]}}, "2 entries"),
    ({"method": "single"}, "one member"),
])
def test_ensemble_json_is_checked_in_one_place(change, match):
    with pytest.raises(EnsembleSpecError, match=match) as raised:
        EnsembleSpec.from_dict({**_stacking(), **change})
    assert isinstance(raised.value, ExportError)


def test_ensemble_json_without_a_required_key_names_it():
    with pytest.raises(EnsembleSpecError, match="lacks \\['image_size'\\]"):
        EnsembleSpec.from_dict({k: v for k, v in _stacking().items() if k != "image_size"})


def test_ensemble_arithmetic_matches_the_documented_formulas():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 2))  # [N, M, C]
    spec = EnsembleSpec.from_dict(_stacking(3, "multinomial"))
    logits = p.reshape(5, 6) @ np.asarray(spec.stacking_coef()).T + 0.1
    np.testing.assert_allclose(spec.combine(p), np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    vote = EnsembleSpec.from_dict({**_stacking(3), "method": "soft_vote"})  # no weights: uniform
    np.testing.assert_allclose(vote.combine(p), p.mean(axis=1))
    with pytest.raises(EnsembleSpecError, match="expected member probabilities"):
        vote.combine(p[:, :1])


def test_contract_modules_import_only_the_standard_library():
    code = ("import sys, histoedge.export.manifest, histoedge.export.ensemble_spec; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'onnx', 'onnxruntime', "
            "'tensorflow', 'keras', 'tf2onnx', 'cv2', 'grpc'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def _string_constants(path: Path) -> list[tuple[str, int]]:
    """(value, line) of every string constant except docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_tensor_names_are_written_only_in_the_contract_module():
    # LABEL is left out: "label" is also the column name of splits.csv, a different fact.
    names = {contract.IMAGE, contract.IMAGE_BYTES, contract.PROBABILITIES, contract.MEMBER_PROBABILITIES}
    home = ROOT / "export" / "manifest.py"
    found = [f"{path.relative_to(ROOT)}:{line} {value!r}"
             for folder in ("histoedge", "training", "export", "serving", "bench", "proto")
             for path in sorted((ROOT / folder).rglob("*.py"))
             # bench/.cache holds built artefacts (the peers' virtual environments, older trees): not source
             if path != home and "_proto" not in path.parts and ".cache" not in path.parts
             for value, line in _string_constants(path) if value in names]
    assert found == []
    assert sorted(value for value, _ in _string_constants(home) if value in names) == sorted(names)
