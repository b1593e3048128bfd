"""Dynamic batching: concurrent requests share session runs, and each caller gets its own rows."""

from __future__ import annotations

import concurrent.futures
import threading

import grpc
import numpy as np
import pytest

from histoedge.serving.batcher import Batcher
from histoedge.serving.client import InferenceClient
from histoedge.serving.errors import DeadlineExceededError, QueueFullError, ServerClosingError
from histoedge.serving.schema import Tensor
from tests.serving.helpers import MODEL, Gate, reference, sample_images, wait_until


def test_concurrent_requests_share_runs(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, max_batch_size=16, max_queue_delay_ms=50)
    batcher = server.models.get(MODEL).batcher
    address = f"127.0.0.1:{server.port}"
    sizes = [1, 3, 2, 1, 4, 2]
    batches = [sample_images(n, seed=10 + i) for i, n in enumerate(sizes)]
    with InferenceClient(address) as client, concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(client.infer, [Tensor("image", "UINT8", sample_images(1))], MODEL)
        wait_until(gate.running.is_set)
        futures = [pool.submit(client.infer, [Tensor("image", "UINT8", b)], MODEL) for b in batches]
        wait_until(lambda: batcher.pending() == len(batches))
        gate.release()
        results = [f.result()[0] for f in futures]
        first.result()
    assert gate.batch_sizes == [1, sum(sizes)]  # all six requests in one session.run
    for images, outputs in zip(batches, results):
        want = reference(repo / MODEL / "1", images)
        np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], rtol=1e-6)
        np.testing.assert_allclose(outputs["member_probabilities"], want["member_probabilities"], rtol=1e-6)
    histogram = server.metrics.registry.get_sample_value(
        "histoedge_batch_size_sum", {"model": MODEL, "version": "1"})
    assert histogram >= 1 + sum(sizes)


def test_batching_disabled_runs_each_request_alone(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, no_batching=True, max_queue_delay_ms=50)
    batcher = server.models.get(MODEL).batcher
    with InferenceClient(f"127.0.0.1:{server.port}") as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.classify_arrays, sample_images(1, seed=i), MODEL) for i in range(4)]
        wait_until(lambda: gate.running.is_set() and batcher.pending() == 3)
        gate.release()
        assert all(len(f.result()) == 1 for f in futures)
    assert gate.batch_sizes == [1, 1, 1, 1]


def echo(batch: np.ndarray) -> dict[str, np.ndarray]:
    return {"double": batch * 2}


def test_batcher_splits_rows_and_respects_max_batch():
    runs: list[int] = []
    release = threading.Event()

    def run(batch):
        release.wait(10)
        runs.append(len(batch))
        return echo(batch)

    batcher = Batcher(run, max_batch_size=4, max_delay_s=0.05, max_queue_size=10).start()
    arrays = [np.full((n, 1), i) for i, n in enumerate([1, 2, 3, 1, 6])]
    futures = [batcher.submit(a) for a in arrays]
    release.set()
    for array, future in zip(arrays, futures):
        np.testing.assert_array_equal(future.result(10)["double"], array * 2)
    batcher.close()
    assert sum(runs) == 13 and max(runs) == 6  # the 6-row request ran alone
    assert all(n <= 4 for n in runs if n != 6)


def test_batcher_queue_limit_deadline_and_close():
    release = threading.Event()

    def run(batch):
        release.wait(10)
        return echo(batch)

    batcher = Batcher(run, max_batch_size=1, max_delay_s=0, max_queue_size=1).start()
    running = batcher.submit(np.zeros((1, 1)))
    wait_until(lambda: batcher.pending() == 0)
    expired = batcher.submit(np.zeros((1, 1)), deadline=0.0)  # already past
    with pytest.raises(QueueFullError):
        batcher.submit(np.zeros((1, 1)))
    release.set()
    running.result(10)
    with pytest.raises(DeadlineExceededError):
        expired.result(10)
    batcher.close()
    with pytest.raises(ServerClosingError):
        batcher.submit(np.zeros((1, 1)))


def test_batcher_run_failure_reaches_every_caller():
    def run(batch):
        raise RuntimeError("boom")

    batcher = Batcher(run, max_batch_size=8, max_delay_s=0.05, max_queue_size=8).start()
    futures = [batcher.submit(np.zeros((1, 1))) for _ in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError, match="boom"):
            future.result(10)
    batcher.close()


def test_internal_error_maps_to_internal_status(repo, start_server):
    def broken(run):
        def fail(batch):
            raise RuntimeError("session exploded")
        return fail

    server = start_server(repo, run_hook=broken)
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.classify_arrays(sample_images(1), MODEL)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "session exploded" in caught.value.details()
        assert client.server_live()


def test_lone_request_does_not_wait_for_the_delay():
    batcher = Batcher(echo, max_batch_size=16, max_delay_s=60, max_queue_size=4).start()
    np.testing.assert_array_equal(batcher.submit(np.ones((1, 1))).result(10)["double"], [[2]])
    batcher.close()


def test_batcher_waits_for_announced_requests():
    runs: list[int] = []

    def run(batch):
        runs.append(len(batch))
        return echo(batch)

    batcher = Batcher(run, max_batch_size=16, max_delay_s=60, max_queue_size=4).start()
    batcher.announce()  # a second request is being decoded
    first = batcher.submit(np.zeros((1, 1)))
    wait_until(lambda: batcher.pending() == 1)
    second = batcher.submit(np.ones((2, 1)))
    batcher.withdraw()
    assert first.result(10)["double"].shape == (1, 1)
    np.testing.assert_array_equal(second.result(10)["double"], [[2], [2]])
    batcher.close()
    assert runs == [3]
