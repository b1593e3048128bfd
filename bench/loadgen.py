"""A closed-loop load generator for Open Inference Protocol gRPC and plain HTTP endpoints.

``concurrency`` clients each send one request, wait for the answer, and send the next
(closed loop), so the offered load adapts to the server and latency is never inflated
by a client-side queue.  The clients are spread over up to ``max_processes`` worker
processes (spawned, each with its own gRPC channel or HTTP connections), so the
client's Python never competes with itself for one GIL.  A run ends when every client
has sent its share of ``max_requests`` or when ``max_seconds`` have passed, whichever
comes first; warm-up requests before a shared start barrier are not counted.

Requests are serialised once, before the run: the clients send fixed bytes through
``grpc`` with identity serialisers, so the client's per-request cost is the transport
plus parsing the response, not building protobufs.

Example::

    payload = oip_tensor_request("breast", images)           # uint8 [1, 224, 224, 3]
    target = Target.grpc("127.0.0.1:8001", [payload])
    result = run_load(target, concurrency=4, max_requests=400, max_seconds=10)
    print(result.throughput, result.p50_ms)
"""

from __future__ import annotations

import math
import multiprocessing
import os
import struct
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from histoedge.export.manifest import IMAGE, IMAGE_BYTES

GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_MAX_MESSAGE = 256 * 1024 * 1024
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Target:
    """Where to send requests and what to send (picklable for the worker processes).

    Args:
        kind: ``"grpc"`` (OIP ModelInfer) or ``"http"`` (POST).
        address: ``host:port``.
        payloads: serialised requests; client ``i`` sends ``payloads[i % len]`` repeatedly.
        path: gRPC method or HTTP path.
        content_type: HTTP only.
        headers: more HTTP headers, as (name, value) pairs.
    """

    kind: str
    address: str
    payloads: tuple[bytes, ...]
    path: str = GRPC_INFER_METHOD
    content_type: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def grpc(cls, address: str, payloads: Sequence[bytes]) -> "Target":
        return cls("grpc", address, tuple(payloads))

    @classmethod
    def http(cls, address: str, payloads: Sequence[bytes], path: str = "/predict",
             content_type: str = "image/png", headers: Sequence[tuple[str, str]] = ()) -> "Target":
        return cls("http", address, tuple(payloads), path, content_type, tuple(headers))

    @classmethod
    def rest(cls, address: str, model_name: str, images: np.ndarray, binary: bool = True) -> "Target":
        """OIP REST ``/infer`` with a UINT8 tensor, in binary tensor data (as tritonclient.http) or JSON."""
        body, header_length = oip_rest_request(model_name, images, binary)
        headers = (("Inference-Header-Content-Length", str(header_length)),) if binary else ()
        return cls.http(address, [body], f"/v2/models/{model_name}/infer",
                        "application/octet-stream" if binary else "application/json", headers)


@dataclass
class LoadResult:
    """What one closed-loop run measured; latencies in milliseconds."""

    concurrency: int
    processes: int
    requests: int
    errors: int
    seconds: float
    throughput: float               # successful requests per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- payloads

def oip_tensor_request(model_name: str, images: np.ndarray, model_version: str = "",
                       input_name: str = IMAGE) -> bytes:
    """A serialised ``ModelInferRequest`` with a UINT8 [N, H, W, 3] input in raw contents."""
    from tritonclient.grpc import service_pb2

    images = np.ascontiguousarray(images, dtype=np.uint8)
    request = service_pb2.ModelInferRequest(model_name=model_name, model_version=model_version)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = input_name, "UINT8"
    tensor.shape.extend(images.shape)
    request.raw_input_contents.append(images.tobytes())
    return request.SerializeToString()


def oip_rest_request(model_name: str, images: np.ndarray, binary: bool = True) -> tuple[bytes, int | None]:
    """An OIP REST infer body with a UINT8 input, and the length of its JSON part (binary only).

    Binary: the JSON header, then the raw pixels; outputs come back as binary too.
    """
    import json

    images = np.ascontiguousarray(images, dtype=np.uint8)
    tensor: dict[str, Any] = {"name": IMAGE, "datatype": "UINT8", "shape": list(images.shape)}
    if binary:
        tensor["parameters"] = {"binary_data_size": images.nbytes}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        return header + images.tobytes(), len(header)
    tensor["data"] = images.reshape(-1).tolist()
    return json.dumps({"inputs": [tensor]}).encode(), None


def oip_png_request(model_name: str, encoded: Sequence[bytes], model_version: str = "",
                    input_name: str = IMAGE_BYTES) -> bytes:
    """A serialised ``ModelInferRequest`` with a BYTES [N] input of encoded images."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model_name, model_version=model_version)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = input_name, "BYTES"
    tensor.shape.append(len(encoded))
    # OIP raw BYTES: every element is a 4-byte little-endian length followed by the bytes.
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in encoded))
    return request.SerializeToString()


# ----------------------------------------------------------------------------- workers

class _GrpcClient:
    def __init__(self, target: Target) -> None:
        import grpc
        from tritonclient.grpc import service_pb2

        self._parse = service_pb2.ModelInferResponse.FromString
        self._channel = grpc.insecure_channel(target.address, options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE)])
        self._call = self._channel.unary_unary(target.path)

    def send(self, payload: bytes) -> None:
        response = self._parse(self._call(payload, timeout=60))
        if not response.raw_output_contents and not response.outputs:
            raise RuntimeError("response without outputs")

    def close(self) -> None:
        self._channel.close()


class _HttpClient:
    """One keep-alive connection per client thread (``http.client`` is not thread-safe)."""

    def __init__(self, target: Target) -> None:
        import http.client

        host, port = target.address.rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=120)
        self._path = target.path
        self._headers = {"Content-Type": target.content_type, "Connection": "keep-alive", **dict(target.headers)}

    def send(self, payload: bytes) -> None:
        import http.client

        for attempt in (1, 2):
            try:
                self._connection.request("POST", self._path, body=payload, headers=self._headers)
                response = self._connection.getresponse()
                body = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed the idle keep-alive connection (uvicorn: after 5 s, e.g. while
                # the clients waited at the start barrier): retry once on a new one, as HTTP
                # client pools do.
                self._connection.close()
                if attempt == 2:
                    raise
            except Exception:
                self._connection.close()  # the next request starts on a clean connection
                raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")

    def close(self) -> None:
        self._connection.close()


def _client_loop(client_factory, shared, payload: bytes, quota: int, warmup: int, barrier,
                 state: dict[str, Any], out: dict[str, Any]) -> None:
    latencies: list[float] = []
    errors, samples = 0, []
    client = client_factory() if shared is None else shared
    try:
        for _ in range(warmup):
            try:
                client.send(payload)
            except Exception:  # noqa: BLE001 - warm-up failures show up in the measured run
                pass
        barrier.wait()
        deadline = state["deadline"]
        while len(latencies) + errors < quota and time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                client.send(payload)
                latencies.append(time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - an error is a measurement
                errors += 1
                if len(samples) < 3:
                    samples.append(f"{type(error).__name__}: {str(error)[:300]}")
    finally:
        out.update(latencies=latencies, errors=errors, samples=samples, end=time.monotonic())
        if shared is None:
            client.close()


def _worker(target: Target, first_client: int, n_clients: int, quota: int, warmup: int,
            max_seconds: float, cores: str | None, process_barrier, queue) -> None:
    try:
        if cores:
            os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
        if target.kind == "grpc":
            shared = _GrpcClient(target)   # one channel per process, shared by its client threads
            factory = None
        else:
            shared, factory = None, (lambda: _HttpClient(target))
        state: dict[str, Any] = {}

        def start_clock() -> None:
            process_barrier.wait()   # every process warmed up: the measured run starts now
            state["start"] = time.monotonic()
            state["deadline"] = state["start"] + max_seconds

        thread_barrier = threading.Barrier(n_clients, action=start_clock)
        outs = [{} for _ in range(n_clients)]
        threads = [threading.Thread(
            target=_client_loop,
            args=(factory, shared, target.payloads[(first_client + i) % len(target.payloads)],
                  quota, warmup, thread_barrier, state, outs[i]), daemon=True)
            for i in range(n_clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if shared is not None:
            shared.close()
        queue.put({"start": state.get("start"), "outs": outs})
    except Exception:  # noqa: BLE001 - report to the parent instead of dying silently
        queue.put({"fatal": traceback.format_exc()})


def run_load(target: Target, concurrency: int, *, max_requests: int, max_seconds: float,
             warmup: int = 2, max_processes: int = 4, cores: str | None = None) -> LoadResult:
    """Run ``concurrency`` closed-loop clients; stop at ``max_requests`` in total or ``max_seconds``.

    Args:
        target: endpoint and payloads.
        concurrency: clients with one request in flight each.
        max_requests: total request budget, shared evenly by the clients.
        max_seconds: wall-clock bound of the measured part.
        warmup: un-timed requests per client before the start barrier.
        max_processes: worker processes the clients are spread over.
        cores: ``taskset``-style core list the worker processes are pinned to.
    """
    host = target.address.rsplit(":", 1)[0].strip("[]")
    if host not in _LOOPBACK:
        raise ValueError(f"the load generator only targets loopback addresses, not {host!r}")
    processes = max(1, min(concurrency, max_processes))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    quota = max(1, math.ceil(max_requests / concurrency))
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(processes), context.Queue()
    workers, first = [], 0
    for share in shares:
        worker = context.Process(target=_worker, args=(target, first, share, quota, warmup, max_seconds,
                                                       cores, barrier, queue), daemon=True)
        worker.start()
        workers.append(worker)
        first += share
    reports = _collect(queue, workers, timeout=max_seconds + 300)
    for worker in workers:
        worker.join(timeout=30)
    fatal = [r["fatal"] for r in reports if "fatal" in r]
    if fatal:
        raise RuntimeError("load generator worker failed:\n" + fatal[0])
    return _summarise(concurrency, processes, reports)


def _collect(queue, workers, timeout: float) -> list[dict[str, Any]]:
    """One report per worker; fail fast if a worker dies without reporting."""
    import queue as queue_module

    reports, deadline = [], time.monotonic() + timeout
    while len(reports) < len(workers):
        try:
            reports.append(queue.get(timeout=1.0))
        except queue_module.Empty:
            dead = [w for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
            if dead or time.monotonic() > deadline:
                for worker in workers:
                    worker.kill()
                raise RuntimeError(f"load generator workers failed (exit codes "
                                   f"{[w.exitcode for w in workers]}) or timed out")
    return reports


def _summarise(concurrency: int, processes: int, reports: list[dict[str, Any]]) -> LoadResult:
    latencies = np.array([lat for r in reports for o in r["outs"] for lat in o["latencies"]]) * 1000.0
    errors = sum(o["errors"] for r in reports for o in r["outs"])
    samples = [s for r in reports for o in r["outs"] for s in o["samples"]][:5]
    start = min(r["start"] for r in reports)
    end = max(o["end"] for r in reports for o in r["outs"])
    seconds = max(end - start, 1e-9)
    if len(latencies):
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        mean = float(latencies.mean())
    else:
        p50 = p95 = p99 = mean = None
    return LoadResult(concurrency=concurrency, processes=processes, requests=int(len(latencies)),
                      errors=int(errors), seconds=seconds, throughput=len(latencies) / seconds,
                      p50_ms=p50, p95_ms=p95, p99_ms=p99, mean_ms=mean, error_samples=samples)
