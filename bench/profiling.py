"""Where the time goes: raw onnxruntime timing, its op profiler, py-spy on the server, PNG decoding.

Each helper returns plain dicts so the benchmarks can store them in JSON and print
them into their Markdown.

Example::

    rows = raw_onnxruntime(model, images, batch_sizes=(1, 4), threads=1, cores="0")
    ops = onnxruntime_op_profile(model, images[:1], threads=1, cores="0")
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _session(model: str, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def in_child(function, cores: str | None, *args) -> Any:
    """Run ``function(*args)`` in a spawned process pinned to ``cores``; return its result."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child_main, args=(function, cores, queue, args))
    process.start()
    result = queue.get(timeout=1800)
    process.join()
    if isinstance(result, dict) and "child_error" in result:
        raise RuntimeError(result["child_error"])
    return result


def _child_main(function, cores, queue, args) -> None:
    import traceback
    try:
        if cores:
            os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
        queue.put(function(*args))
    except Exception:  # noqa: BLE001 - hand the traceback to the parent
        queue.put({"child_error": traceback.format_exc()})


def _time_batches(model: str, images: np.ndarray, batch_sizes: Sequence[int], threads: int,
                  max_seconds: float, max_runs: int, rounds: int = 3) -> list[dict[str, Any]]:
    """Time every batch size in ``rounds`` interleaved rounds; report medians over the rounds.

    Interleaving makes a burst of outside load hit all batch sizes alike, so the best batch
    size is not simply the one measured during the quietest moment.
    """
    session = _session(model, threads)
    name = session.get_inputs()[0].name
    inputs = {batch: np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:]))) for batch in batch_sizes}
    for x in inputs.values():
        for _ in range(2):
            session.run(None, {name: x})
    samples: dict[int, list[dict[str, float]]] = {batch: [] for batch in batch_sizes}
    for _ in range(rounds):
        for batch, x in inputs.items():
            times, deadline, cpu_start = [], time.monotonic() + max_seconds / rounds, time.process_time()
            while len(times) < max(1, max_runs // rounds) and (not times or time.monotonic() < deadline):
                start = time.perf_counter()
                session.run(None, {name: x})
                times.append(time.perf_counter() - start)
            ms = np.array(times) * 1000.0
            samples[batch].append({"runs": len(times), "p50_ms": float(np.median(ms)), "mean_ms": float(ms.mean()),
                                   "cpu_ms": (time.process_time() - cpu_start) * 1000.0 / len(times)})
    rows = []
    for batch, rounds_of_batch in samples.items():
        mean_ms = float(np.median([r["mean_ms"] for r in rounds_of_batch]))
        rows.append({"batch_size": batch, "runs": sum(r["runs"] for r in rounds_of_batch),
                     "p50_ms": float(np.median([r["p50_ms"] for r in rounds_of_batch])), "mean_ms": mean_ms,
                     "images_per_s": batch * 1000.0 / mean_ms,
                     "cpu_ms_per_image": float(np.median([r["cpu_ms"] for r in rounds_of_batch])) / batch})
    return rows


def raw_onnxruntime(model: Path, images: np.ndarray, *, batch_sizes: Sequence[int], threads: int,
                    cores: str | None, max_seconds: float = 4.0, max_runs: int = 200) -> list[dict[str, Any]]:
    """Latency and images/s of ``InferenceSession.run`` per batch size, in a process pinned like the server."""
    return in_child(_time_batches, cores, str(model), images, tuple(batch_sizes), threads,
                     max_seconds, max_runs)


def _op_profile(model: str, image: np.ndarray, threads: int, runs: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        session = _session(model, threads, profile_prefix=str(Path(folder) / "ort"))
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: image})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0)
    total = sum(by_op.values()) or 1
    return [{"op_type": op, "share": us / total, "ms_per_run": us / 1000.0 / runs}
            for op, us in by_op.most_common(8)]


def onnxruntime_op_profile(model: Path, image: np.ndarray, *, threads: int, cores: str | None,
                           runs: int = 20) -> list[dict[str, Any]]:
    """Kernel time per operator type (onnxruntime's profiler), largest first."""
    return in_child(_op_profile, cores, str(model), image, threads, runs)


def png_decode_ms(encoded: Sequence[bytes], size: int, repeats: int = 20) -> float:
    """Median milliseconds to decode, convert to RGB and resize one PNG, as a server must."""
    import cv2

    times = []
    for _ in range(repeats):
        for data in encoded:
            start = time.perf_counter()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _median_call_ms(call, calls: int, warmup: int = 10) -> float:
    """Median wall time of ``call()`` in ms, over ``calls`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def grpc_floor_ms(address: str, calls: int = 200) -> float:
    """Median round trip of the cheapest RPC (ServerReady): the transport's share of any call."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ServerReadyRequest()
        return _median_call_ms(lambda: stub.ServerReady(request), calls)


def grpc_refused_ms(address: str, payload: bytes, calls: int = 200) -> float:
    """Median round trip of a serialised ``ModelInfer`` the server refuses once parsed (e.g. an
    unknown model): what carrying and parsing a request of this size costs, without any model work."""
    import grpc

    from bench.loadgen import GRPC_INFER_METHOD

    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        method = channel.unary_unary(GRPC_INFER_METHOD)

        def refused() -> None:
            try:
                method(payload, timeout=30)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                raise RuntimeError("the server answered a request it should have refused")

        return _median_call_ms(refused, calls)


def py_spy_record(pid: int, seconds: float) -> subprocess.Popen | None:
    """Start sampling ``pid`` (and its threads) with py-spy; ``None`` if py-spy is not installed."""
    import sys

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    out = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    process = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                "--rate", "200", "--nonblocking", "--format", "raw", "-o", out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.output = out  # type: ignore[attr-defined]
    return process


def py_spy_summary(recorder: subprocess.Popen | None, top: int = 8) -> list[dict[str, Any]]:
    """Share of samples per innermost Python function (self time) from a finished recording."""
    if recorder is None:
        return []
    recorder.wait(timeout=120)
    path = Path(recorder.output)  # type: ignore[attr-defined]
    leaves: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines() if path.exists() else []:
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frame = stack.split(";")[-1]
            leaves[frame] += int(count)
    path.unlink(missing_ok=True)
    total = sum(leaves.values()) or 1
    return [{"function": f, "share": n / total} for f, n in leaves.most_common(top)]
