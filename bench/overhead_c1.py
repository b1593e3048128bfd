"""Where one request's time goes at concurrency 1: the server against raw onnxruntime, side by side.

Each round measures, next to each other on the server's core: raw onnxruntime at batch 1,
the server at c=1, and the same model behind a second server with ``--no-monitoring``.  The
server's own Prometheus histograms then split its side of a request (all means):

* **model**: the server's ``session.run`` minus raw's at batch 1.  It is the same call; in the
  server it runs on a core that sat idle (or ran the transport) since the last request instead
  of in a tight loop.
* **request path**: the time in ``DataPlane.infer`` minus ``session.run``.  This is the input
  checks, the batcher's queue and its two thread hand-offs, and building the outputs.
* **transport**: the client's latency minus the time in ``DataPlane.infer``.  This is both gRPC
  stacks, HTTP/2 over loopback, protobuf, and the conversion to and from internal types.
  Two floors put it in scale: the round trip of an empty call (``ServerReady``), and that of
  the same request naming a model the server does not have, which is refused as soon as it is
  parsed.
* **monitoring**: the server minus the ``--no-monitoring`` server, for p50 and for CPU.  Its
  checks run after the answer, so this cost shows up inside the other parts, on the next request.

The machine drifts by +-10% within a minute, which on a 20-50 ms model is more than what is
being measured.  So every figure is the median of per-round differences.

Example::

    result = overhead_c1(server, repo, model, images, payloads, cfg, cores, client_cores, "int8")
    result["p50_ms"], result["breakdown"]["transport_ms"], why_c1(result)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import profiling
from bench.common import histogram_mean, measured_load, metrics_text, serve
from bench.loadgen import Target, oip_tensor_request

THREADS = 1
REFUSED_MODEL = "no-such-model"
_SERVER_HISTOGRAMS = {"request": "histoedge_request_seconds", "inference": "histoedge_inference_seconds",
                      "queue": "histoedge_queue_seconds"}


def histogram_mean_ms(before: str, after: str, metric: str) -> float | None:
    """:func:`bench.common.histogram_mean` of a histogram in seconds, in milliseconds."""
    mean = histogram_mean(before, after, metric)
    return None if mean is None else mean * 1000.0


def _server_round(server: dict[str, Any], payloads, cfg: dict, seconds: float, client_cores) -> dict[str, Any]:
    before = metrics_text(server["metrics_port"])
    result = measured_load(Target.grpc(server["address"], payloads), 1, server["pid"],
                           max_requests=cfg["max_requests"], max_seconds=seconds, cores=client_cores,
                           metrics_port=server["metrics_port"])
    after = metrics_text(server["metrics_port"])
    for part, metric in _SERVER_HISTOGRAMS.items():
        result[f"server_{part}_mean_ms"] = histogram_mean_ms(before, after, metric)
    return result


def overhead_c1(server: dict[str, Any], repo: Path, model: Path, images, payloads, cfg: dict, cores, client_cores,
                precision: str) -> dict[str, Any]:
    """The server at c=1 against raw onnxruntime at batch 1, in ``cfg["ab_rounds"]`` interleaved rounds.

    Args:
        server: the running server (``bench.common.serve``), with monitoring on.
        repo: its model repository (a second server is started on it with ``--no-monitoring``).
        model: the ONNX file raw onnxruntime runs.
        images: uint8 [N, H, W, 3]; ``payloads``: the same as serialised ``ModelInfer`` requests.

    Returns:
        ``{"pairs", "p50_ms", "cpu_ms", "breakdown", "floors"}``: the overheads (medians of per-round
        differences) and their parts; see the module docstring.
    """
    seconds = cfg["max_seconds"] / 4
    rounds = []
    with serve(repo, threads=THREADS, cores=cores, extra_args=["--no-monitoring"],
               log_name=f"server-{precision}-c1-no-monitoring") as quiet:
        for round_index in range(cfg["ab_rounds"]):
            measured: dict[str, Any] = {}
            steps = ("raw", "server", "quiet")
            for step in steps if round_index % 2 == 0 else steps[::-1]:
                if step == "raw":
                    measured["raw"] = profiling.raw_onnxruntime(model, images, batch_sizes=(1,), threads=THREADS,
                                                                cores=cores, max_seconds=seconds)[0]
                else:
                    measured[step] = _server_round(server if step == "server" else quiet, payloads, cfg, seconds,
                                                   client_cores)
            raw, served, unmonitored = measured["raw"], measured["server"], measured["quiet"]
            rounds.append({
                "raw_p50_ms": raw["p50_ms"], "raw_mean_ms": raw["mean_ms"], "raw_cpu_ms": raw["cpu_ms_per_image"],
                "server_p50_ms": served["p50_ms"], "server_mean_ms": served["mean_ms"],
                "server_cpu_ms": served["server_cpu_ms_per_request"],
                **{key: served[key] for key in served if key.startswith("server_") and key.endswith("_mean_ms")},
                "no_monitoring_p50_ms": unmonitored["p50_ms"],
                "no_monitoring_cpu_ms": unmonitored["server_cpu_ms_per_request"]})
    floors = {"empty_call_ms": profiling.grpc_floor_ms(server["address"]),
              "refused_request_ms": profiling.grpc_refused_ms(
                  server["address"], oip_tensor_request(REFUSED_MODEL, images[:1]))}
    result = {"pairs": rounds, **summarise(rounds), "floors": floors}
    parts = result["breakdown"]
    print(f"[{precision}] c=1 overhead over raw batch 1, {len(rounds)} interleaved rounds (medians): "
          f"p50 {result['p50_ms']:+.2f} ms, CPU {result['cpu_ms']:+.2f} ms/req; of the mean: transport "
          f"{parts['transport_ms']:.2f}, request path {parts['request_path_ms']:.2f}, model slower "
          f"{parts['model_ms']:+.2f}; monitoring {parts['monitoring_p50_ms']:+.2f} ms p50; empty call "
          f"{floors['empty_call_ms']:.2f} ms, refused request {floors['refused_request_ms']:.2f} ms", flush=True)
    return result


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each per-round difference (see the module docstring)."""
    def median(values) -> float:
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else float("nan")
    return {
        "p50_ms": median(r["server_p50_ms"] - r["raw_p50_ms"] for r in rounds),
        "cpu_ms": median(r["server_cpu_ms"] - r["raw_cpu_ms"] for r in rounds),
        "breakdown": {
            "mean_ms": median(r["server_mean_ms"] - r["raw_mean_ms"] for r in rounds),
            "model_ms": median(r["server_inference_mean_ms"] - r["raw_mean_ms"] for r in rounds
                               if r["server_inference_mean_ms"] is not None),
            "request_path_ms": median(r["server_request_mean_ms"] - r["server_inference_mean_ms"] for r in rounds
                                      if r["server_request_mean_ms"] is not None
                                      and r["server_inference_mean_ms"] is not None),
            "transport_ms": median(r["server_mean_ms"] - r["server_request_mean_ms"] for r in rounds
                                   if r["server_request_mean_ms"] is not None),
            "monitoring_p50_ms": median(r["server_p50_ms"] - r["no_monitoring_p50_ms"] for r in rounds
                                        if r["no_monitoring_p50_ms"] is not None),
            "monitoring_cpu_ms": median(r["server_cpu_ms"] - r["no_monitoring_cpu_ms"] for r in rounds),
            "no_monitoring_p50_ms": median(r["no_monitoring_p50_ms"] - r["raw_p50_ms"] for r in rounds
                                           if r["no_monitoring_p50_ms"] is not None),
        },
    }


def why_c1(result: dict[str, Any], target_ms: float = 1.0) -> str:
    """The c=1 miss in plain words, from :func:`overhead_c1`'s result."""
    parts, floors = result["breakdown"], result["floors"]
    return (f"Of the mean {parts['mean_ms']:.2f} ms a request spends beyond raw onnxruntime at batch 1, "
            f"{parts['transport_ms']:.2f} ms is the transport (both gRPC stacks over loopback; a request the "
            f"server refuses as soon as it is parsed already takes {floors['refused_request_ms']:.2f} ms round "
            f"trip, an empty call {floors['empty_call_ms']:.2f} ms), {parts['request_path_ms']:.2f} ms the "
            f"server's request path (checks, the batcher's two thread hand-offs, outputs), and "
            f"{parts['model_ms']:.2f} ms the same model run taking longer in the server than in raw's tight "
            f"loop, on a core that idled, or ran the transport or the monitoring checks, in between. "
            f"Monitoring's checks run after the answer but on the same core, and account for "
            f"{parts['monitoring_p50_ms']:.2f} ms of the p50 ({parts['monitoring_cpu_ms']:.2f} ms of CPU); with `--no-monitoring` the p50 overhead is "
            f"{parts['no_monitoring_p50_ms']:.2f} ms. " + _verdict(parts, floors, target_ms))


def _verdict(parts: dict[str, float], floors: dict[str, float], target_ms: float) -> str:
    largest = max(("transport", parts["transport_ms"]), ("request path", parts["request_path_ms"]),
                  ("model", parts["model_ms"]), key=lambda item: item[1])
    if floors["refused_request_ms"] >= target_ms:
        return (f"A request refused as soon as it is parsed already takes longer than the {target_ms:g} ms "
                f"target, so this target is out of reach for a Python gRPC server on this machine.")
    return (f"Meeting the {target_ms:g} ms target needs {parts['mean_ms'] - target_ms:.2f} ms less; the "
            f"largest part is the {largest[0]} ({largest[1]:.2f} ms).")


def breakdown_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`overhead_c1`'s parts (medians over rounds)."""
    parts, floors = result["breakdown"], result["floors"]
    rows = [("server minus raw batch 1, mean latency", parts["mean_ms"]),
            ("transport: client latency minus time in the data plane", parts["transport_ms"]),
            ("request path: data plane minus `session.run`", parts["request_path_ms"]),
            ("model: `session.run` in the server minus raw's", parts["model_ms"]),
            ("monitoring: p50 minus the `--no-monitoring` server's", parts["monitoring_p50_ms"]),
            ("monitoring: CPU per request minus the `--no-monitoring` server's", parts["monitoring_cpu_ms"]),
            ("`--no-monitoring` server minus raw batch 1, p50", parts["no_monitoring_p50_ms"]),
            ("round trip of an empty call (`ServerReady`)", floors["empty_call_ms"]),
            ("round trip of the same request refused once parsed (unknown model)", floors["refused_request_ms"])]
    return "\n".join([f"Where the c=1 overhead goes ({len(result['pairs'])} interleaved rounds, medians):\n",
                      "| part | ms |", "|---|---|", *(f"| {name} | {value:.2f} |" for name, value in rows)])
