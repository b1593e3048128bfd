"""Monitoring benchmark: what input quality, drift and feedback bookkeeping cost the server.

Two measurements, side by side in one run, on the seed-sized ensemble (four seed CNNs at
224x224 plus stacking, int8, exported with its reference profile):

* CPU per 224-px image: the monitoring features and quality checks
  (:func:`histoedge.serving.monitoring.quality.assess`) against onnxruntime inference of the
  same batch with one thread, both in this process pinned to the server's core
  (target: below 5% of inference);
* closed-loop gRPC throughput of ``histoedge serve`` with monitoring on against
  ``--no-monitoring``, alternating the two servers in rounds (PNG and UINT8 tensor input;
  target: at least 0.95), both as requests per second and as server CPU seconds per
  request (off / on: the throughput ratio of a CPU-bound server, robust to other load on
  the machine, which wall-clock throughput is not).

Run::

    python -m bench.bench_monitoring            # about 5 minutes on 2 cores (plus the model build)
    python -m bench.bench_monitoring --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np

from bench.artifacts import encode_png, ensure_repo, ensure_run, onnx_path, synthetic_images
from bench.common import (check, checks_table, core_split, cpu_seconds, machine_info, md_table, pin_self, serve,
                          write_results)
from bench.loadgen import Target, oip_png_request, oip_tensor_request, run_load

FULL = {"size": 224, "members": 4, "precision": "int8", "concurrency": 8, "seconds": 10.0, "rounds": 3,
        "cpu_repeats": 20}
QUICK = {"size": 64, "members": 2, "precision": "int8", "concurrency": 2, "seconds": 1.0, "rounds": 1,
         "cpu_repeats": 2}
BATCH = 16


def cpu_per_image(repo, name: str, size: int, repeats: int) -> dict[str, float]:
    """CPU milliseconds per image: inference (1 thread) and monitoring features + checks."""
    import onnxruntime as ort

    from histoedge.export.manifest import IMAGE, Manifest
    from histoedge.serving.monitoring.profile import load_profile
    from histoedge.serving.monitoring.quality import assess

    version = repo / name / "1"
    profile = load_profile(version, Manifest.load(version).profile)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(onnx_path(repo, name)), options, providers=["CPUExecutionProvider"])
    images = synthetic_images(BATCH, size, seed=3)

    def cpu_ms(call) -> float:
        call()
        samples = []
        for _ in range(repeats):
            start = time.process_time()
            call()
            samples.append((time.process_time() - start) * 1000 / BATCH)
        return float(np.median(samples))

    inference, monitoring = [], []
    for _ in range(3):  # interleaved, so a busy moment hits both
        inference.append(cpu_ms(lambda: session.run(None, {IMAGE: images})))
        monitoring.append(cpu_ms(lambda: assess(images, profile)))
    return {"inference_ms": float(np.median(inference)), "monitoring_ms": float(np.median(monitoring)),
            "profile": profile is not None}


def throughput(repo, name: str, cfg, cores, client_cores) -> dict[str, dict[str, list[float]]]:
    images = synthetic_images(BATCH, cfg["size"], seed=5)
    payloads = {
        "png": [oip_png_request(name, [encode_png(image)]) for image in images],
        "tensor": [oip_tensor_request(name, image[None]) for image in images],
    }
    results: dict[str, dict[str, list[float]]] = {
        kind: {"on": [], "off": [], "on_cpu_ms": [], "off_cpu_ms": []} for kind in payloads}
    with serve(repo, cores=cores, log_name="monitoring-on") as on, \
            serve(repo, cores=cores, extra_args=["--no-monitoring"], log_name="monitoring-off") as off:
        for round_ in range(cfg["rounds"]):
            order = (("off", off), ("on", on)) if round_ % 2 == 0 else (("on", on), ("off", off))
            for kind, data in payloads.items():
                for mode, server in order:
                    cpu_before = cpu_seconds(server["pid"])
                    result = run_load(Target.grpc(server["address"], data), cfg["concurrency"],
                                      max_requests=10 ** 6, max_seconds=cfg["seconds"], cores=client_cores)
                    if result.errors:
                        raise RuntimeError(f"{mode}/{kind}: {result.errors} errors: {result.error_samples[:2]}")
                    cpu_ms = (cpu_seconds(server["pid"]) - cpu_before) * 1000 / max(1, result.requests)
                    results[kind][mode].append(result.throughput)
                    results[kind][mode + "_cpu_ms"].append(cpu_ms)
                    print(f"  round {round_ + 1} {kind:6s} monitoring {mode:3s}: {result.throughput:.1f} req/s, "
                          f"server CPU {cpu_ms:.2f} ms/request", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts and a 64 px model: a smoke run")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    cores, client_cores = core_split()
    run = ensure_run(cfg["size"], cfg["members"])
    name = f"seed{cfg['size']}"
    repo = ensure_repo(run, name, cfg["precision"])
    pin_self(cores)
    cpu = cpu_per_image(repo, name, cfg["size"], cfg["cpu_repeats"])
    print(f"CPU per {cfg['size']}-px image: inference {cpu['inference_ms']:.3f} ms, "
          f"monitoring {cpu['monitoring_ms']:.3f} ms", flush=True)
    pin_self(",".join(filter(None, (cores, client_cores))) or None)
    rates = throughput(repo, name, cfg, cores, client_cores)
    ratios = {kind: float(np.mean(v["on"]) / np.mean(v["off"])) for kind, v in rates.items()}
    cpu_ratios = {kind: float(np.mean(v["off_cpu_ms"]) / np.mean(v["on_cpu_ms"])) for kind, v in rates.items()}
    checks = [
        check(f"monitoring CPU / inference CPU per {cfg['size']}-px image",
              cpu["monitoring_ms"] / cpu["inference_ms"], "<", 0.05),
        check(f"throughput monitoring on / off, PNG input, c={cfg['concurrency']}", ratios["png"], ">=", 0.95),
        check(f"throughput monitoring on / off, UINT8 input, c={cfg['concurrency']}", ratios["tensor"], ">=", 0.95),
        check("CPU-time throughput monitoring on / off (server CPU per request off / on), PNG input",
              cpu_ratios["png"], ">=", 0.95),
        check("CPU-time throughput monitoring on / off (server CPU per request off / on), UINT8 input",
              cpu_ratios["tensor"], ">=", 0.95),
    ]
    rows = [[kind, mode, len(v[mode]), float(np.mean(v[mode])), float(np.mean(v[mode + "_cpu_ms"]))]
            for kind, v in rates.items() for mode in ("off", "on")]
    body = (checks_table(checks) + "\n\n"
            + md_table(["input", "monitoring", "rounds", "req/s (mean)", "server CPU ms/request"], rows) + "\n\n"
            + f"CPU per image (median of interleaved runs, one thread, batch {BATCH}): inference "
              f"{cpu['inference_ms']:.3f} ms, features + quality checks {cpu['monitoring_ms']:.3f} ms.\n"
              f"Servers pinned to core {cores}, load generator on {client_cores}; one image per request.\n")
    write_results("monitoring", {"machine": machine_info(), "config": cfg, "cpu": cpu, "throughput": rates,
                                 "ratios": ratios, "cpu_ratios": cpu_ratios, "checks": checks},
                  "Monitoring: input quality, drift and feedback on vs off", body, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
