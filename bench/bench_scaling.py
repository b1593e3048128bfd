"""Scaling: server throughput and memory as batch size, image size and loaded versions grow.

- Batch size: requests carrying 1..64 images each (UINT8 tensor) to the int8 seed-sized
  ensemble at 224x224, two clients in flight.
- Image size: one seed CNN exported (fp32) at 64, 128, 224 and 448 px, one image per
  request, eight clients in flight (dynamic batching on).
- Loaded versions: 1, 2 and 4 versions of the int8 ensemble in the repository (the server
  loads every version), requests spread evenly over the versions.

The server runs pinned to one core with one onnxruntime thread, the load generator on
the other core; memory is the server's resident set size (RSS) after the run.

Run::

    python -m bench.bench_scaling            # about 5 minutes on 2 cores
    python -m bench.bench_scaling --quick
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from bench.artifacts import ensure_repo, ensure_run, synthetic_images
from bench.common import core_split, cpu_seconds, machine_info, md_table, pin_self, rss_mb, serve, write_results
from bench.loadgen import Target, oip_tensor_request, run_load

FULL = {"size": 224, "members": 4, "batch_sizes": (1, 2, 4, 8, 16, 32, 64), "image_sizes": (64, 128, 224, 448),
        "versions": (1, 2, 4), "max_requests": 2000, "max_seconds": 6.0}
QUICK = {"size": 64, "members": 2, "batch_sizes": (1, 4), "image_sizes": (64,), "versions": (1, 2),
         "max_requests": 10, "max_seconds": 1.0}
THREADS = 1
WARMUP = 2


def measured_load(target: Target, concurrency: int, pid: int, cfg: dict, max_requests: int | None = None):
    """``run_load`` and the server's CPU seconds spent on it (robust to other load on the machine)."""
    before = cpu_seconds(pid)
    result = run_load(target, concurrency, max_requests=max_requests or cfg["max_requests"],
                      max_seconds=cfg["max_seconds"], warmup=WARMUP, cores=cfg["client_cores"])
    return result, cpu_seconds(pid) - before


def _row(measured, concurrency: int, images_per_request: int, rss: float, **extra: Any) -> dict[str, Any]:
    result, cpu = measured
    served_images = (result.requests + result.errors + WARMUP * concurrency) * images_per_request
    row = dict(extra)
    row.update(images_per_s=result.throughput * images_per_request, requests_per_s=result.throughput,
               p50_ms=result.p50_ms, p99_ms=result.p99_ms, errors=result.errors, rss_mb=rss,
               cpu_ms_per_image=cpu * 1000.0 / max(served_images, 1))
    return row


def _print(label: str, row: dict[str, Any]) -> None:
    print(f"  {label}: {row['images_per_s']:8.1f} images/s p50 {row['p50_ms'] or 0:8.2f} ms "
          f"RSS {row['rss_mb']:6.0f} MiB CPU {row['cpu_ms_per_image']:.2f} ms/image errors {row['errors']}",
          flush=True)


def batch_scaling(cfg: dict, cores, client_cores) -> list[dict[str, Any]]:
    name = f"seed{cfg['size']}"
    repo = ensure_repo(ensure_run(cfg["size"], cfg["members"]), name, "int8")
    images = synthetic_images(max(cfg["batch_sizes"]), cfg["size"], seed=5)
    rows = []
    print(f"batch size (images per request), int8 ensemble at {cfg['size']} px, 2 clients", flush=True)
    with serve(repo, threads=THREADS, cores=cores, log_name="scaling-batch") as server:
        idle = rss_mb(server["pid"])
        for batch in cfg["batch_sizes"]:
            target = Target.grpc(server["address"], [oip_tensor_request(name, images[:batch])])
            measured = measured_load(target, 2, server["pid"], cfg, max(4, cfg["max_requests"] // batch))
            rows.append(_row(measured, 2, batch, rss_mb(server["pid"]), batch_size=batch, idle_rss_mb=idle))
            _print(f"batch {batch:3d}", rows[-1])
    return rows


def image_size_scaling(cfg: dict, cores, client_cores) -> list[dict[str, Any]]:
    rows = []
    print("image size, one seed CNN (fp32), 8 clients, one image per request", flush=True)
    for size in cfg["image_sizes"]:
        name = f"single{size}"
        repo = ensure_repo(ensure_run(size, 1), name, "fp32")
        images = synthetic_images(4, size, seed=6)
        with serve(repo, threads=THREADS, cores=cores, log_name=f"scaling-size{size}") as server:
            idle = rss_mb(server["pid"])
            target = Target.grpc(server["address"], [oip_tensor_request(name, images[i:i + 1]) for i in range(4)])
            measured = measured_load(target, 8, server["pid"], cfg)
            rows.append(_row(measured, 8, 1, rss_mb(server["pid"]), image_size=size, idle_rss_mb=idle,
                             model_mb=(repo / name / "1" / "model.onnx").stat().st_size / 2 ** 20))
            _print(f"{size:3d} px", rows[-1])
    return rows


def version_scaling(cfg: dict, cores, client_cores) -> list[dict[str, Any]]:
    name = f"seed{cfg['size']}"
    run = ensure_run(cfg["size"], cfg["members"])
    images = synthetic_images(4, cfg["size"], seed=8)
    rows = []
    print(f"loaded versions of the int8 ensemble, 8 clients spread over the versions", flush=True)
    for versions in cfg["versions"]:
        repo = ensure_repo(run, name, "int8", versions=versions)
        with serve(repo, threads=THREADS, cores=cores, log_name=f"scaling-versions{versions}") as server:
            idle = rss_mb(server["pid"])
            payloads = [oip_tensor_request(name, images[i % 4:i % 4 + 1], model_version=str(1 + i % versions))
                        for i in range(8)]
            measured = measured_load(Target.grpc(server["address"], payloads), 8, server["pid"], cfg)
            rows.append(_row(measured, 8, 1, rss_mb(server["pid"]), versions=versions, idle_rss_mb=idle))
            _print(f"{versions} version(s)", rows[-1])
    return rows


def markdown(results: dict[str, Any], cfg: dict) -> str:
    b, s, v = results["batch"], results["image_size"], results["versions"]
    return "\n".join([
        f"Server pinned to core `{results['pinning']['server']}` with {THREADS} onnxruntime thread, load "
        f"generator on core `{results['pinning']['client']}`; RSS is the server's resident memory after each "
        f"run (idle = right after start-up); CPU ms/image is the server's CPU time per image, which other "
        f"load on the machine does not inflate.\n",
        f"**Images per request** (int8 ensemble, {cfg['members']} members at {cfg['size']} px, 2 clients; "
        "requests larger than the max batch of 16 run alone)\n",
        md_table(["images/request", "images/s", "p50 ms/request", "p99 ms", "CPU ms/image", "RSS MiB", "errors"],
                 [[r["batch_size"], r["images_per_s"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_image"], r["rss_mb"],
                   r["errors"]] for r in b]), "",
        "**Image size** (one seed CNN, fp32, one image per request, 8 clients, dynamic batching on)\n",
        md_table(["px", "model MiB", "images/s", "p50 ms", "p99 ms", "CPU ms/image", "idle RSS MiB", "RSS MiB",
                  "errors"],
                 [[r["image_size"], r["model_mb"], r["images_per_s"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_image"],
                   r["idle_rss_mb"], r["rss_mb"], r["errors"]] for r in s]), "",
        "**Loaded versions** (int8 ensemble; the server loads every version folder; 8 clients spread "
        "evenly over the versions)\n",
        md_table(["versions", "images/s", "p50 ms", "p99 ms", "CPU ms/image", "idle RSS MiB", "RSS MiB", "errors"],
                 [[r["versions"], r["images_per_s"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_image"], r["idle_rss_mb"],
                   r["rss_mb"], r["errors"]] for r in v]),
    ])


def prepare(cfg: dict) -> None:
    """Build and export every model first, on all cores, before this process pins itself."""
    run = ensure_run(cfg["size"], cfg["members"])
    for versions in cfg["versions"]:
        ensure_repo(run, f"seed{cfg['size']}", "int8", versions=versions)
    for size in cfg["image_sizes"]:
        ensure_repo(ensure_run(size, 1), f"single{size}", "fp32")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and counts: a smoke run")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    info = machine_info()
    cores, client_cores = core_split()
    prepare(cfg)
    pin_self(client_cores)
    cfg = dict(cfg, client_cores=client_cores)
    results = {"machine": info, "config": cfg, "pinning": {"server": cores, "client": client_cores},
               "batch": batch_scaling(cfg, cores, client_cores),
               "image_size": image_size_scaling(cfg, cores, client_cores),
               "versions": version_scaling(cfg, cores, client_cores)}
    write_results("scaling", results, "Scaling: batch size, image size, loaded versions",
                  markdown(results, cfg), quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
