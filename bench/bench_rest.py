"""REST (Open Inference Protocol, binary tensor data) against gRPC on one server, at concurrency 16.

One ``histoedge serve`` process with both transports on, pinned to one core with one
compute thread; the load generator on the other core.  Short closed-loop runs alternate
between gRPC and REST (binary tensor data, as ``tritonclient.http`` sends it), so
background load on a shared machine hits both alike; medians of the rounds are compared.
One image (UINT8 tensor) per request.  REST with JSON tensors runs once, for context.

Run::

    python -m bench.bench_rest                              # the seed-sized int8 ensemble at 224 px
    python -m bench.bench_rest --repo demo/models --model breast
    python -m bench.bench_rest --quick                      # smoke run
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.artifacts import ensure_repo, ensure_run, synthetic_images
from bench.bench_serving import batch_stats, measured_load
from bench.common import check, checks_table, core_split, machine_info, md_table, metrics_text, serve, write_results
from bench.loadgen import Target, oip_tensor_request

FULL = {"concurrency": 16, "rounds": 3, "max_requests": 3000, "max_seconds": 5.0}
QUICK = {"concurrency": 4, "rounds": 1, "max_requests": 40, "max_seconds": 1.0}


def model_image_size(repo: Path, model: str) -> int:
    from histoedge.export.manifest import Manifest

    versions = sorted((p for p in (repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return Manifest.load(versions[-1]).image_size[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="model repository (default: the seed-sized int8 ensemble)")
    parser.add_argument("--model", help="model name in --repo (default: its only model)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repo is None:
        size = 64 if args.quick else 224
        args.repo = ensure_repo(ensure_run(size, 2 if args.quick else 4), f"seed{size}", "int8")
    model = args.model or next(p.name for p in sorted(args.repo.iterdir()) if p.is_dir() and not p.name.startswith("."))
    size = model_image_size(args.repo, model)
    image = synthetic_images(1, size, seed=3)
    server_cores, client_cores = core_split()
    concurrency = plan["concurrency"]
    runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "rest": []}
    with serve(args.repo, threads=1, cores=server_cores, http=True, log_name="rest-vs-grpc") as server:
        targets = {"grpc": Target.grpc(server["address"], [oip_tensor_request(model, image)]),
                   "rest": Target.rest(server["http_address"], model, image, binary=True)}

        def run(kind: str, target: Target) -> dict[str, Any]:
            before = metrics_text(server["metrics_port"])
            result = measured_load(target, concurrency, server["pid"], max_requests=plan["max_requests"],
                                   max_seconds=plan["max_seconds"], cores=client_cores)
            result["mean_batch"] = batch_stats(before, metrics_text(server["metrics_port"]))
            print(f"{kind:10s} c={concurrency}: {result['throughput']:.1f} req/s, p50 {result['p50_ms']:.2f} ms, "
                  f"server {result['server_cpu_ms_per_request']:.2f} CPU ms/request, "
                  f"mean batch {result['mean_batch'] or 0:.2f}, errors {result['errors']}", flush=True)
            return result

        for _ in range(plan["rounds"]):
            for kind in ("grpc", "rest"):
                runs[kind].append(run(kind, targets[kind]))
        json_run = run("rest-json", Target.rest(server["http_address"], model, image, binary=False))

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    ratio = median("rest", "throughput") / median("grpc", "throughput")
    cpu_ratio = median("rest", "server_cpu_ms_per_request") / median("grpc", "server_cpu_ms_per_request")
    errors = sum(r["errors"] for kind in runs for r in runs[kind]) + json_run["errors"]
    print(f"REST (binary) / gRPC throughput at c={concurrency}: {ratio:.2f} "
          f"(server CPU per request {cpu_ratio:.2f}x); errors {errors}", flush=True)
    # Target (ours): HTTP/1.1 + JSON headers may cost REST at most a fifth of gRPC's throughput.
    checks = [check(f"REST (binary tensor data) / gRPC at c={concurrency} (throughput)", ratio, ">=", 0.8),
              check(f"gRPC / REST (binary tensor data) server CPU per request at c={concurrency}", 1 / cpu_ratio,
                    ">=", 0.8),
              check("failed requests (all runs)", float(errors), "<=", 0)]
    rows = [[name, median(kind, "throughput"), median(kind, "p50_ms"), median(kind, "p99_ms"),
             median(kind, "server_cpu_ms_per_request"), median(kind, "mean_batch") or 0.0, len(runs[kind])]
            for name, kind in (("gRPC (raw tensor)", "grpc"), ("REST (binary tensor data)", "rest"))]
    rows.append(["REST (JSON tensor)", json_run["throughput"], json_run["p50_ms"], json_run["p99_ms"],
                 json_run["server_cpu_ms_per_request"], json_run["mean_batch"] or 0.0, 1])
    info = machine_info()
    body = (f"Model `{model}` ({size}x{size}, {args.repo}); one image per request; concurrency {concurrency}; "
            f"server pinned to one core, one onnxruntime thread; runs alternate gRPC/REST, medians of "
            f"{plan['rounds']} rounds.\n\n"
            + md_table(["transport", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "mean batch", "runs"], rows)
            + f"\n\n**REST (binary) / gRPC throughput: {ratio:.2f}**; server CPU per request REST / gRPC: "
              f"{cpu_ratio:.2f}; failed requests: {errors}. The machine is shared: wall-clock figures move with "
              f"other load (load average at start {info['load_average_at_start']:.1f}); the CPU-per-request "
              f"ratio is the steadier one.\n\n" + checks_table(checks) + "\n")
    write_results("rest", {"machine": info, "model": model, "image_size": size, "concurrency": concurrency,
                           "runs": runs, "rest_json": json_run, "ratio_throughput": ratio,
                           "ratio_cpu_per_request": cpu_ratio, "errors": errors, "checks": checks},
                  "REST vs gRPC on one server", body, quick=args.quick)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
