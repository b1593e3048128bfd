"""The field of view in the manifest: from --mpp, from the dataset's declaration, or unknown."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from histoedge.export.errors import ExportError, ManifestError
from histoedge.export.fov import field_of_view, run_field_of_view
from histoedge.export.manifest import DATASET_INFO_FILE, FieldOfView, Manifest
from histoedge.export.package import ExportOptions, export_run
from histoedge.training.data.synth import generate_synthetic
from tests.support.model_packages import write_model_version


def test_the_synthetic_dataset_declares_its_field_of_view(tmp_path):
    generate_synthetic(tmp_path, n=10, size=32, patients=2)
    declared = json.loads((tmp_path / DATASET_INFO_FILE).read_text())
    assert declared["microns_per_pixel"] == 4.0 and declared["image_size"] == [32, 32]
    assert field_of_view(None, tmp_path, [], 32) == FieldOfView(4.0, (32, 32))
    assert field_of_view(1.0, tmp_path, [], 32) == FieldOfView(1.0, (32, 32))  # --mpp wins


def test_mpp_takes_the_size_of_a_training_image(tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((46, 70, 3), np.uint8))
    fov = field_of_view(0.5, None, [tmp_path / "missing.png", image], 32)
    assert fov == FieldOfView(0.5, (46, 70)) and fov.microns == (23.0, 35.0)
    assert field_of_view(None, None, [image], 32) is None
    with pytest.raises(ExportError, match="positive"):
        field_of_view(-1.0, None, [], 32)
    (tmp_path / DATASET_INFO_FILE).write_text("{not json")
    with pytest.raises(ExportError, match="field of view"):
        field_of_view(None, tmp_path, [], 32)


def test_a_run_uses_its_dataset_declaration(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    generate_synthetic(data, n=10, size=48, patients=2)
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"data": str(data)}))
    assert run_field_of_view(run, None, 32) == FieldOfView(128 / 48, (48, 48))
    assert run_field_of_view(tmp_path / "elsewhere", None, 32) is None


def test_manifest_round_trip_and_old_manifests(tmp_path):
    version = write_model_version(tmp_path, "m", 1)
    manifest = Manifest.load(version)
    assert manifest.field_of_view is None  # a manifest without the field still loads
    with_fov = Manifest.from_dict({**manifest.to_dict(), "field_of_view": {"microns_per_pixel": 2.0,
                                                                           "image_size": [64, 64]}})
    assert with_fov.field_of_view == FieldOfView(2.0, (64, 64))
    assert Manifest.from_dict(json.loads(with_fov.to_json())) == with_fov
    with pytest.raises(ManifestError):
        Manifest.from_dict({**manifest.to_dict(), "field_of_view": {"microns_per_pixel": 0, "image_size": [8, 8]}})


def test_export_records_mpp(runs, tmp_path):
    manifest = export_run(runs["single"], tmp_path, "m", options=ExportOptions(mpp=0.5))
    assert manifest.field_of_view is not None and manifest.field_of_view.microns_per_pixel == 0.5
    assert Manifest.load(tmp_path / "m" / "1").field_of_view == manifest.field_of_view
