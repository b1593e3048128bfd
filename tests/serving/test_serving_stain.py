"""The server normalises stain as training did: both input paths, fallbacks counted, bad references refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from histoedge.export.manifest import IMAGE, IMAGE_BYTES, MANIFEST_FILE, PROBABILITIES
from histoedge.export.stain import fit_reference
from histoedge.serving.errors import ModelLoadError
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.runtime import ModelVersion
from histoedge.serving.schema import InferenceRequest, Tensor
from histoedge.serving.settings import ServerSettings
from tests.serving.helpers import MODEL, encode, reference
from tests.support.he_tiles import he_tiles
from tests.support.model_packages import write_model_version

SIZE = 32


def _load(version_dir, tmp_path):
    metrics = ServerMetrics(CollectorRegistry())
    return ModelVersion.load(version_dir, ServerSettings(repo=tmp_path, threads=1), metrics), metrics


@pytest.mark.parametrize("method", ["density", "macenko", "reinhard"])
def test_requests_are_normalised_on_both_input_paths(tmp_path, method):
    normal, shifted = he_tiles(4, size=SIZE, seed=3), he_tiles(4, size=SIZE, seed=3, stain_shift=1.0)
    stain = fit_reference(method, normal)
    version_dir = write_model_version(tmp_path, MODEL, 1, size=SIZE, stain=stain.to_dict())
    model, _metrics = _load(version_dir, tmp_path)
    pngs = np.empty(len(shifted), dtype=object)
    pngs[:] = [encode(tile) for tile in shifted]
    try:
        by_pixels = model.infer(InferenceRequest(MODEL, inputs=[Tensor(IMAGE, "UINT8", shifted)],
                                                 outputs=[PROBABILITIES]))
        by_bytes = model.infer(InferenceRequest(MODEL, inputs=[Tensor(IMAGE_BYTES, "BYTES", pngs)],
                                                outputs=[PROBABILITIES]))
    finally:
        model.close()
    expected = reference(version_dir, stain.normalise_batch(shifted)[0])[PROBABILITIES]
    raw = reference(version_dir, shifted)[PROBABILITIES]
    assert not np.allclose(expected, raw, atol=1e-3)  # normalisation changes the answer here
    for response in (by_pixels, by_bytes):
        np.testing.assert_allclose(response.outputs[0].data, expected, rtol=0, atol=1e-6)
    assert model.metadata(("1",)).parameters["stain_normalisation"] == method


def test_tiles_the_method_cannot_handle_pass_unchanged_and_are_counted(tmp_path):
    stain = fit_reference("macenko", he_tiles(3, size=SIZE))
    version_dir = write_model_version(tmp_path, MODEL, 1, size=SIZE, stain=stain.to_dict())
    model, metrics = _load(version_dir, tmp_path)
    blank = np.full((2, SIZE, SIZE, 3), 248, np.uint8)
    try:
        response = model.infer(InferenceRequest(MODEL, inputs=[Tensor(IMAGE, "UINT8", blank)],
                                                outputs=[PROBABILITIES]))
    finally:
        model.close()
    np.testing.assert_allclose(response.outputs[0].data, reference(version_dir, blank)[PROBABILITIES], atol=1e-6)
    assert np.isfinite(response.outputs[0].data).all()
    count = metrics.registry.get_sample_value(
        "histoedge_stain_fallbacks_total", {"model": MODEL, "version": "1", "reason": "background"})
    assert count == 2


def test_a_version_with_a_broken_stain_reference_does_not_load(tmp_path):
    version_dir = write_model_version(tmp_path, MODEL, 1, size=SIZE)
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    manifest["preprocessing"]["stain_normalisation"] = {"method": "macenko", "stain_matrix": [[1, 2]]}
    (version_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="stain reference"):
        _load(version_dir, tmp_path)


def test_slide_backend_in_process_normalises_like_the_server(tmp_path):
    from histoedge.serving.slides.backends import LocalBackend

    normal, shifted = he_tiles(4, size=SIZE, seed=3), he_tiles(4, size=SIZE, seed=3, stain_shift=1.0)
    stain = fit_reference("macenko", normal)
    version_dir = write_model_version(tmp_path, MODEL, 1, size=SIZE, stain=stain.to_dict())
    model, _metrics = _load(version_dir, tmp_path)
    local = LocalBackend(version_dir, threads=1)
    try:
        served = model.infer(InferenceRequest(MODEL, inputs=[Tensor(IMAGE, "UINT8", shifted)],
                                              outputs=[PROBABILITIES])).outputs[0].data
        in_process = local.run(shifted)
    finally:
        model.close()
        local.close()
    np.testing.assert_allclose(in_process, served, rtol=0, atol=1e-6)
    assert not np.allclose(in_process, reference(version_dir, shifted)[PROBABILITIES], atol=1e-3)
