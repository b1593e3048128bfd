"""Exporting run directories: parity, meta-learners, precisions, refusals and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoedge.export import data
from histoedge.export.convert import KerasMember, load_keras_model
from histoedge.export.graph import EnsembleSpec
from histoedge.export.manifest import Manifest
from histoedge.export.package import ExportOptions, export_run
from histoedge.export.quantize import INT8_DEFAULT, Int8Settings
from histoedge.export.repository import ExportError, list_versions
from histoedge.export.verify import make_session, predict, verify_version


def _reference(run, images):
    """Keras members + numpy meta-learner, independent of the exported graph."""
    spec = EnsembleSpec.load(run / "ensemble.json")
    members = np.stack([KerasMember(load_keras_model(run / "members" / m / "model.keras")).predict(images)
                        for m in spec.members], axis=1)
    return spec, members, spec.combine(members)


@pytest.mark.parametrize("kind", ["stacking", "soft_vote", "single", "multiclass"])
def test_fp32_parity_with_keras_and_meta_learner(kind, runs, tmp_path):
    run = runs[kind]
    manifest = export_run(run, tmp_path, "m")
    version_dir = tmp_path / "m" / "1"
    spec = EnsembleSpec.load(run / "ensemble.json")
    images = np.concatenate([data.split_images(run / "splits.csv", s, 32, spec.classes)[0]
                             for s in ("test", "val", "train")])
    assert len(images) >= 30
    _, expected_members, expected = _reference(run, images)
    probabilities, members = predict(make_session(version_dir / "model.onnx"), images)
    assert np.abs(members - expected_members).max() <= 1e-4
    assert np.abs(probabilities - expected).max() <= 1e-4
    assert manifest.extra["parity_max_abs_diff"] <= 1e-4
    assert manifest.extra["ensemble_method"] == spec.method
    assert probabilities.shape == (len(images), spec.n_classes)
    assert members.shape == (len(images), spec.n_members, spec.n_classes)
    assert manifest.outputs[1].shape == (-1, spec.n_members, spec.n_classes)
    assert verify_version(version_dir).ok


def test_int8_export_records_metrics_side_by_side(runs, tmp_path):
    manifest = export_run(runs["stacking"], tmp_path, "m", options=ExportOptions(precision="int8"))
    assert manifest.precision == "int8"
    assert set(manifest.metrics) == {"split", "fp32", "int8"}
    for precision in ("fp32", "int8"):
        assert manifest.metrics[precision]["n"] == 12
        assert 0.0 <= manifest.metrics[precision]["roc_auc"] <= 1.0
    assert set(manifest.extra["latency_ms"]) == {"fp32", "int8"}
    assert manifest.extra["calibration_images"] == 12  # the training split only
    settings = Int8Settings.from_config(manifest.extra["int8_settings"])
    assert settings == INT8_DEFAULT and settings.label() == "QDQ U8S8 per-channel MinMax"
    report = verify_version(tmp_path / "m" / "1")
    assert report.ok, report.summary()
    graph = __import__("onnx").load(tmp_path / "m" / "1" / "model.onnx").graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops
    # The stacking meta-learner stays in float, even where pre-processing renamed its fused nodes.
    meta = [n for n in graph.node if n.name.startswith("ensemble/") and n.op_type != "QuantizeLinear"
            and not n.name.startswith("ensemble/image")]
    assert any(n.op_type in ("Gemm", "MatMul") for n in meta)
    assert not [n.name for n in meta if n.op_type in ("DequantizeLinear", "QLinearMatMul", "QGemm")]


def test_int8_refused_when_auc_drops_too_much_unless_forced(runs, tmp_path):
    # A negative allowed drop makes any int8 model "too inaccurate": the refusal path runs for real.
    strict = ExportOptions(precision="int8", max_auc_drop=-1.0)
    with pytest.raises(ExportError, match="ROC-AUC"):
        export_run(runs["stacking"], tmp_path, "m", options=strict)
    assert list_versions(tmp_path / "m") == []
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp")] == []
    forced = ExportOptions(precision="int8", max_auc_drop=-1.0, force=True)
    assert export_run(runs["stacking"], tmp_path, "m", options=forced).version == 1


def test_fp16_loads_and_runs_on_cpu(runs, tmp_path):
    manifest = export_run(runs["soft_vote"], tmp_path, "m", options=ExportOptions(precision="fp16"))
    assert manifest.precision == "fp16"
    assert abs(manifest.metrics["fp16"]["accuracy"] - manifest.metrics["fp32"]["accuracy"]) <= 0.1
    report = verify_version(tmp_path / "m" / "1")
    assert report.ok, report.summary()


def test_parity_failure_is_a_clear_error_and_writes_nothing(runs, tmp_path):
    with pytest.raises(ExportError, match="differs from Keras"):
        export_run(runs["single"], tmp_path, "m", options=ExportOptions(parity_tolerance=-1.0))
    assert list((tmp_path / "m").iterdir()) in ([], [tmp_path / "m" / ".lock"])


def test_versions_increment_and_are_never_overwritten(runs, tmp_path):
    first = export_run(runs["single"], tmp_path, "m")
    second = export_run(runs["single"], tmp_path, "m")
    assert (first.version, second.version) == (1, 2)
    before = (tmp_path / "m" / "1" / "model.onnx").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_run(runs["single"], tmp_path, "m", version=1)
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == before
    assert export_run(runs["single"], tmp_path, "m", version=7).version == 7
    assert list_versions(tmp_path / "m") == [1, 2, 7]


def test_manifest_round_trip_and_onnx_metadata(exported):
    manifest = Manifest.load(exported)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert Manifest.from_dict(json.loads((exported / "manifest.json").read_text())) == manifest
    manifest.check_checksum(exported)
    assert manifest.inputs[0].to_dict() == {"name": "image", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}
    assert [o.name for o in manifest.outputs] == ["probabilities", "member_probabilities"]
    assert manifest.classes == ("benign", "malignant") and manifest.threshold == 0.4
    assert manifest.positive_class == 1 and manifest.image_size == (32, 32)
    assert manifest.preprocessing["scaling"] == "in-graph"
    assert manifest.extra["opset"] == 17 and manifest.toolkit_version
    meta = make_session(exported / "model.onnx").get_modelmeta().custom_metadata_map
    assert meta["name"] == "breast" and meta["version"] == "1" and meta["precision"] == "fp32"
    assert json.loads(meta["classes"]) == ["benign", "malignant"]
    assert set(json.loads(meta["source_sha256"])) == {"ensemble.json", "members/recipe0/model.keras",
                                                     "members/recipe1/model.keras"}


def test_malformed_ensemble_json_is_a_clear_error(runs, tmp_path):
    spec = json.loads((runs["stacking"] / "ensemble.json").read_text())
    spec["stacking"]["coef"] = [[1.0, 2.0]]
    with pytest.raises(ExportError, match="do not fit"):
        EnsembleSpec.from_dict(spec)
    with pytest.raises(ExportError, match="no ensemble.json"):
        export_run(tmp_path, tmp_path / "models", "m")


def test_the_profile_of_a_stain_normalising_run_describes_normalised_pixels(runs, tmp_path):
    # The server computes quality features and predictions after its stain normalisation, so the
    # reference profile must too; a profile of raw pixels would flag every request as drifted.
    import csv
    import shutil

    import cv2

    from histoedge.export.stain import STAIN_FILE, fit_reference
    from histoedge.serving.monitoring.features import FEATURES, image_features
    from histoedge.serving.monitoring.profile import STAIN_FEATURES
    from tests.support.he_tiles import he_tiles

    run = tmp_path / "run"
    shutil.copytree(runs["single"], run)
    rows = list(csv.DictReader(open(run / "splits.csv", newline="")))
    tiles = he_tiles(len(rows), size=32, seed=3, stain_shift=1.0)  # another lab's stain
    for i, row in enumerate(rows):
        row["path"] = str(tmp_path / f"tile{i}.png")
        cv2.imwrite(row["path"], cv2.cvtColor(tiles[i], cv2.COLOR_RGB2BGR))
    with open(run / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    reference = fit_reference("reinhard", he_tiles(6, size=32, seed=0))
    (run / STAIN_FILE).write_text(json.dumps(reference.to_dict()))

    export_run(run, tmp_path / "repo", "m")
    profile = json.loads((tmp_path / "repo" / "m" / "1" / "profile.json").read_text())
    reference_rows = [i for i, r in enumerate(rows) if r["split"] in ("train", "val")]
    raw = tiles[reference_rows]
    stain_columns = [FEATURES.index(n) for n in STAIN_FEATURES]

    def stain_mean(images):
        return image_features(images)[:, stain_columns].mean(axis=0)

    normalised = stain_mean(reference.normalise_batch(raw)[0])
    assert np.abs(normalised - stain_mean(raw)).max() > 0.02  # the normalisation does move them
    np.testing.assert_allclose(profile["stain"]["mean"], normalised, atol=1e-6)
