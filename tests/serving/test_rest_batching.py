"""REST and gRPC requests go through one data plane: they are merged into shared batches."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np

from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from tests.serving.helpers import MODEL, Gate, free_port, http, reference, sample_images, wait_until


def rest_infer(port: int, images: np.ndarray) -> np.ndarray:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(images.shape),
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "outputs": [{"name": "probabilities"}]}).encode()
    status, _, body = http(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", "POST", header + images.tobytes(),
                           {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body
    output = json.loads(body)["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def grpc_infer(address: str, images: np.ndarray) -> np.ndarray:
    with InferenceClient(address) as client:
        return client.infer([Tensor("image", "UINT8", images)], MODEL, outputs=["probabilities"])[0]["probabilities"]


def sample(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, {"model": MODEL, "version": "1", **labels}) or 0.0


def test_rest_and_grpc_requests_share_a_batch(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, http_port=free_port(), max_batch_size=16, max_queue_delay_ms=50)
    batcher = server.models.get(MODEL).batcher
    address, registry = f"127.0.0.1:{server.port}", server.metrics.registry
    batches = [sample_images(n, seed=40 + i) for i, n in enumerate([1, 2, 3, 1, 2, 3])]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(rest_infer, server.http_port, sample_images(1))
        wait_until(gate.running.is_set)  # the batcher is busy: everything below queues up
        futures = [pool.submit(rest_infer, server.http_port, b) if i % 2 else pool.submit(grpc_infer, address, b)
                   for i, b in enumerate(batches)]
        wait_until(lambda: batcher.pending() == len(batches))
        gate.release()
        results = [f.result(30) for f in futures]
        first.result(30)
    assert gate.batch_sizes == [1, 12]  # three REST and three gRPC requests in one session.run
    assert sample(registry, "histoedge_batch_size_count") == 2
    assert sample(registry, "histoedge_batch_size_sum") == 13
    assert sample(registry, "histoedge_batch_size_bucket", le="16.0") - sample(
        registry, "histoedge_batch_size_bucket", le="8.0") == 1  # one batch of 9-16 rows
    for images, probabilities in zip(batches, results):
        np.testing.assert_allclose(probabilities, reference(repo / MODEL / "1", images)["probabilities"], rtol=1e-6)
    assert sample(registry, "histoedge_requests_total", outcome="ok", protocol="rest") == 4
    assert sample(registry, "histoedge_requests_total", outcome="ok", protocol="grpc") == 3


def test_concurrent_mixed_load_has_no_failures(repo, start_server):
    server = start_server(repo, http_port=free_port(), max_batch_size=16, max_queue_delay_ms=2)
    address, registry = f"127.0.0.1:{server.port}", server.metrics.registry
    images = [sample_images(1 + i % 3, seed=60 + i) for i in range(16)]
    want = [reference(repo / MODEL / "1", batch)["probabilities"] for batch in images]

    def client(index: int) -> int:
        for _ in range(6):
            if index % 2:
                got = rest_infer(server.http_port, images[index])
            else:
                got = grpc_infer(address, images[index])
            np.testing.assert_allclose(got, want[index], rtol=1e-6)
        return 6

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(client, range(16))) == 96
    assert sample(registry, "histoedge_requests_total", outcome="ok", protocol="rest") == 48
    assert sample(registry, "histoedge_requests_total", outcome="ok", protocol="grpc") == 48
    rows = sample(registry, "histoedge_batch_size_sum")
    runs = sample(registry, "histoedge_batch_size_count")
    assert rows == 6 * sum(len(b) for b in images)  # every row ran exactly once
    failed = [s for family in registry.collect() if family.name == "histoedge_requests" for s in family.samples
              if s.name.endswith("_total") and s.labels["outcome"] != "ok" and s.value]
    assert failed == []
    print(f"mixed load: {rows:.0f} rows in {runs:.0f} session runs (mean batch {rows / runs:.2f})")
