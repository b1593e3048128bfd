"""Swapping versions whose input sizes differ: the successor runs the whole request again."""

from __future__ import annotations

import shutil

import numpy as np
from prometheus_client import CollectorRegistry

from histoedge.export.manifest import IMAGE_BYTES, PROBABILITIES
from histoedge.serving.client import InferenceClient
from histoedge.serving.dataplane import DataPlane
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.runtime import ModelVersion
from histoedge.serving.schema import InferenceRequest, Tensor
from histoedge.serving.settings import ServerSettings
from tests.serving.helpers import (MODEL, Hammer, decode_like_server, encode, reference, sample_images,
                                   wait_until)
from tests.support.model_packages import write_model_version



def _pngs(count: int, seed: int, size: int = 20) -> list[bytes]:
    """PNGs of neither version's size, so every version decodes and resizes them itself."""
    return [encode(image) for image in sample_images(count, seed=seed, size=size)]


def _expected(version_dir, pngs: list[bytes], size: int) -> np.ndarray:
    return reference(version_dir, np.stack([decode_like_server(png, size) for png in pngs]))[PROBABILITIES]


def _bytes_tensor(pngs: list[bytes]) -> Tensor:
    data = np.empty(len(pngs), dtype=object)
    data[:] = pngs
    return Tensor(IMAGE_BYTES, "BYTES", data)


class _RetiredAtLookup:
    """A registry whose first answer is a version retired right after the lookup."""

    def __init__(self, retired: ModelVersion, successor: ModelVersion) -> None:
        self._answers = [retired, successor]

    def get(self, name: str, version: str = "") -> ModelVersion:
        return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]


def test_retired_version_hands_the_whole_request_to_a_successor_of_another_size(tmp_path):
    metrics = ServerMetrics(CollectorRegistry())
    settings = ServerSettings(repo=tmp_path, threads=1)
    retired = ModelVersion.load(write_model_version(tmp_path, MODEL, 1, size=16), settings, metrics)
    successor = ModelVersion.load(write_model_version(tmp_path, MODEL, 2, size=24), settings, metrics)
    retired.close()
    pngs = _pngs(3, seed=4)
    try:
        response = DataPlane(_RetiredAtLookup(retired, successor), metrics).infer(
            InferenceRequest(MODEL, inputs=[_bytes_tensor(pngs)], outputs=[PROBABILITIES], id="r1"))
    finally:
        successor.close()
    assert (response.model_version, response.id) == ("2", "r1")
    # Decoded and resized again for version 2 (24 px), not the 16 px rows prepared for version 1.
    np.testing.assert_allclose(response.outputs[0].data, _expected(tmp_path / MODEL / "2", pngs, 24), rtol=1e-6)
    assert metrics.registry.get_sample_value(
        "histoedge_requests_total", {"model": MODEL, "version": "2", "outcome": "ok", "protocol": "internal"}) == 1


def test_hot_swap_between_input_sizes_under_load_fails_no_request(tmp_path, start_server):
    write_model_version(tmp_path, MODEL, 1, size=16)
    server = start_server(tmp_path, max_queue_delay_ms=1)  # rescans only on reload()
    # Large images keep requests decoding most of the time, so the swap catches some of them
    # between the lookup of the old version and the queueing of their rows.
    pngs = _pngs(4, seed=8, size=320)
    expected = {"1": _expected(tmp_path / MODEL / "1", pngs, 16)}

    def request(client: InferenceClient) -> str:
        outputs, version = client.infer([_bytes_tensor(pngs)], MODEL, outputs=[PROBABILITIES])
        np.testing.assert_allclose(outputs[PROBABILITIES], expected[version], rtol=1e-6)
        return version

    with Hammer(f"127.0.0.1:{server.port}", request, threads=4) as load:
        wait_until(lambda: len(load.versions) > 10)
        for old, new, size in ((1, 2, 24), (2, 3, 16), (3, 4, 24)):
            # One rescan puts the new version in place and retires the old one.
            expected[str(new)] = _expected(write_model_version(tmp_path, MODEL, new, size=size), pngs, size)
            shutil.rmtree(tmp_path / MODEL / str(old))
            server.reload()
            wait_until(lambda: server.models.versions(MODEL) == (new,))
            served = len(load.versions)
            wait_until(lambda: len(load.versions) > served + 10)
    assert load.failures == []
    assert {"1", "2", "3", "4"} <= set(load.versions) and load.versions[-1] == "4"
