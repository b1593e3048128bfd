"""Versions: hot swap under load with no failed request, explicit versions, broken versions."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from histoedge.serving.client import InferenceClient
from histoedge.serving.repository import ModelRepository
from histoedge.serving.schema import Tensor
from tests.support.model_packages import write_model_version
from tests.serving.helpers import MODEL, Hammer, reference, sample_images, wait_until


@pytest.fixture
def fresh_repo(tmp_path):
    write_model_version(tmp_path, MODEL, 1)
    return tmp_path


def test_repository_scan_ignores_temp_and_non_digit_folders(tmp_path):
    write_model_version(tmp_path, MODEL, 2)
    for name in (".tmp-3-99", "latest", "0", "3.bak"):
        (tmp_path / MODEL / name).mkdir()
    (tmp_path / ".cache" / "1").mkdir(parents=True)
    (tmp_path / "no_versions_yet" / ".tmp-1-5").mkdir(parents=True)
    assert {name: sorted(v) for name, v in ModelRepository(tmp_path).scan().items()} == {MODEL: [2]}


def test_hot_swap_under_load(fresh_repo, start_server):
    server = start_server(fresh_repo, poll_seconds=0.1, max_queue_delay_ms=1)
    images = sample_images(2, seed=21)
    expected = {v: reference(fresh_repo / MODEL / v, images)["probabilities"] for v in ("1",)}

    def request(client: InferenceClient) -> str:
        outputs, version = client.infer([Tensor("image", "UINT8", images)], MODEL)
        np.testing.assert_allclose(outputs["probabilities"], expected[version], rtol=1e-6)
        return version

    with Hammer(f"127.0.0.1:{server.port}", request) as load:
        versions_seen = load.versions
        wait_until(lambda: len(versions_seen) > 20)
        staged = write_model_version(fresh_repo / ".staging", MODEL, 2)
        expected["2"] = reference(staged, images)["probabilities"]
        assert not np.allclose(expected["1"], expected["2"])
        write_model_version(fresh_repo, MODEL, 2)  # staged in a dot-folder, then renamed
        wait_until(lambda: versions_seen[-30:].count("2") >= 30 and len(versions_seen) > 30)
        assert "1" in versions_seen
        # Withdrawing the newest version falls back to the previous one, still without failures.
        os.rename(fresh_repo / MODEL / "2", fresh_repo / MODEL / ".withdrawn-2")
        wait_until(lambda: versions_seen[-30:].count("1") >= 30)
    assert load.failures == []
    assert "2" in versions_seen and versions_seen[-1] == "1"
    write_model_version(fresh_repo, MODEL, 2)
    server.reload()
    wait_until(lambda: server.models.versions(MODEL) == (1, 2))
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        outputs, version = client.infer([Tensor("image", "UINT8", images)], MODEL, version="1")
        assert version == "1"
        np.testing.assert_allclose(outputs["probabilities"],
                                   reference(fresh_repo / MODEL / "1", images)["probabilities"], rtol=1e-6)
        assert list(client.model_metadata(MODEL).versions) == ["1", "2"]


def stage_broken_version(repo, version: int, damage: str):
    """Write a version with a bad checksum or a corrupt graph, then rename it in place."""
    staging = repo / ".staging"
    path = write_model_version(staging, MODEL, version)
    manifest = json.loads((path / "manifest.json").read_text())
    if damage == "checksum":
        manifest["sha256"] = "0" * 64
    else:
        (path / "model.onnx").write_bytes(b"this is not an onnx graph")
        manifest["sha256"] = hashlib.sha256(b"this is not an onnx graph").hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    os.rename(path, repo / MODEL / str(version))


@pytest.mark.parametrize("damage", ["checksum", "graph"])
def test_broken_version_keeps_previous(fresh_repo, start_server, damage, caplog):
    server = start_server(fresh_repo)
    stage_broken_version(fresh_repo, 5, damage)
    server.models.refresh()
    assert "cannot load model tiny version 5" in caplog.text
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        prediction, = client.classify_arrays(sample_images(1), MODEL)
        assert prediction.label in ("benign", "malignant")
        assert list(client.model_metadata(MODEL).versions) == ["1"]
        assert not client.model_ready(MODEL, "5")
        assert client.health() == "SERVING"
    caplog.clear()
    server.models.refresh()
    assert "cannot load" not in caplog.text  # logged once until its files change


def test_sighup_style_rescan_and_removal(fresh_repo, start_server):
    server = start_server(fresh_repo)  # no polling: only explicit rescans
    write_model_version(fresh_repo, MODEL, 3)
    server.reload()
    wait_until(lambda: server.models.versions(MODEL) == (1, 3))
    shutil.rmtree(fresh_repo / MODEL / "1")
    server.reload()
    wait_until(lambda: server.models.versions(MODEL) == (3,))
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        assert not client.model_ready(MODEL, "1") and client.model_ready(MODEL, "3")
    # A removed version's series are dropped, not left at 0 (see test_hardening_metrics.py).
    assert server.metrics.registry.get_sample_value(
        "histoedge_model_ready", {"model": MODEL, "version": "1"}) is None
    assert server.metrics.registry.get_sample_value(
        "histoedge_model_ready", {"model": MODEL, "version": "3"}) == 1
