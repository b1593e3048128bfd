"""``histoedge export --run RUN --student``: the distilled student as its own model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from histoedge.export import data
from histoedge.export.convert import KerasMember, load_keras_model
from histoedge.export.package import ExportOptions, export_run
from histoedge.export.repository import ExportError
from histoedge.export.verify import make_session, predict, verify_version
from tests.export.conftest import SIZE, tiny_model


@pytest.fixture(scope="module")
def student_run(runs, tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    shutil.copytree(runs["stacking"], run)
    (run / "student").mkdir()
    tiny_model(2, seed=7).save(run / "student" / "model.keras")
    (run / "student" / "metrics.json").write_text(json.dumps({"name": "student", "threshold": 0.37}))
    return run


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_student_exports_alone_with_its_threshold_and_verifies(student_run, tmp_path, precision):
    manifest = export_run(student_run, tmp_path, "s", options=ExportOptions(precision=precision), student=True)
    version = tmp_path / "s" / "1"
    assert verify_version(version).ok
    assert list(manifest.members) == ["student"] and manifest.threshold == pytest.approx(0.37)
    assert manifest.precision == precision and manifest.outputs[1].shape == (-1, 1, 2)
    images = data.split_images(student_run / "splits.csv", "test", SIZE, ("benign", "malignant"))[0]
    probabilities, members = predict(make_session(version / "model.onnx"), images)
    expected = KerasMember(load_keras_model(student_run / "student" / "model.keras")).predict(images)
    tolerance = 1e-4 if precision == "fp32" else 0.1
    assert np.abs(probabilities - expected).max() <= tolerance
    np.testing.assert_allclose(members[:, 0], probabilities, atol=1e-6)


def test_student_export_of_a_run_without_student_is_a_clear_error(runs, tmp_path):
    with pytest.raises(ExportError, match="no distilled student"):
        export_run(runs["single"], tmp_path, "s", student=True)
    assert not (tmp_path / "s" / "1").exists()
