"""Where a ``histoedge serve`` process spends its CPU under load: py-spy on the server at c=16.

Starts the server pinned to one core with one onnxruntime thread (as every serving
benchmark does), drives it with the closed-loop gRPC load generator from the other core,
samples it with py-spy (Python frames, without pausing it; ``--gil``: only the thread holding the
GIL, i.e. where the Python work goes) and sorts the busy samples into what the request path
does: the model itself, gRPC's C core, protobuf parsing and serialising, decoding and
encoding tensors, the batcher's hand-offs, monitoring, metrics and logging.  Run it before
and after a change to ``serving/`` to see where the time went.

Run::

    python -m bench.profile_server                  # the 64 px int8 ensemble, 10 s at c=16
    python -m bench.profile_server --seconds 20 --gil --variant "no-monitoring=--no-monitoring" \
        --out server_profile_64_gil                 # as committed in bench/results/
    python -m bench.profile_server --repo demo/models --seconds 20 --out server_profile_demo
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench.artifacts import ensure_repo, ensure_run, synthetic_images
from bench.common import (core_split, cpu_seconds, machine_info, md_table, pin_self, python_exe, serve,
                          write_results)
from bench.loadgen import Target, oip_tensor_request, run_load

# (category, substrings of a frame: the first category any frame of a stack matches wins,
# innermost frame first, so "onnxruntime" below a "batcher" frame counts as the model).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model: onnxruntime session.run", ("onnxruntime_pybind11_state", "onnxruntime::", "InferenceSession.run",
                                        "run (onnxruntime/", "MlasGemm", "MlasConv", "libonnxruntime")),
    ("protobuf: parse request", ("FromString", "ParseFromString", "upb_Decode", "_upb_Decoder")),
    ("protobuf: build/serialise response", ("SerializeToString", "upb_Encode", "response_to_pb",
                                            "InferOutputTensor")),
    ("tensors: decode inputs (codecs)", ("decode_input", "request_from_pb")),
    ("tensors: encode outputs (codecs)", ("encode_output", "encode_bytes", "_make_outputs", "labels (")),
    ("monitoring", ("serving/monitoring/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("logging", ("logging/__init__",)),
    ("hand-offs: batcher queue, futures (wake and wait)", ("serving/batcher.py", "_wait (serving/runtime.py)")),
    ("gRPC server: Python, its thread pool, C core", ("grpc/_server.py", "grpc/_common.py", "cygrpc", "grpc_core::",
                                                      "grpc_", "_cygrpc", "concurrent/futures/thread.py")),
    ("request path (servicer, data plane, runtime)", ("serving/servicer.py", "serving/dataplane.py",
                                                      "serving/runtime.py", "serving/drain.py")),
)


def categorise(stack: Sequence[str]) -> str:
    """The category of the innermost frame that has one, looking through threading plumbing
    (a ``Condition.notify`` called by ``Future.set_result`` in the batcher is the batcher's hand-off)."""
    for frame in reversed(stack):               # innermost first
        if frame.endswith(GENERIC):
            continue
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "threading waits" if any(f.endswith(GENERIC) for f in stack) else "other"


GENERIC = ("(threading.py)", "(contextlib.py)", "(concurrent/futures/_base.py)")


def leaf_with_callers(stack: Sequence[str]) -> str:
    """The innermost frame and its callers up to the first that is not threading plumbing:
    "Condition.notify" alone does not say whose hand-off it is."""
    chain = [stack[-1]]
    for frame in reversed(stack[:-1]):
        chain.append(frame)
        if not chain[-2].endswith(GENERIC):
            break
    return " <- ".join(chain)


def summarise_raw(path: Path, top: int = 40) -> dict[str, Any]:
    """Busy samples by category (first match from the innermost frame) and by innermost frame."""
    by_category: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = stack_text.split(";")
        total += count
        by_category[categorise(stack)] += count
        by_leaf[leaf_with_callers(stack)] += count
        for name, needles in CATEGORIES:
            if any(needle in frame for frame in stack for needle in needles):
                inclusive[name] += count
    total = max(total, 1)
    return {"samples": total,
            "categories": [{"category": c, "share": n / total} for c, n in by_category.most_common()],
            "inclusive": [{"category": c, "share": n / total} for c, n in inclusive.most_common()],
            "leaves": [{"frame": f, "share": n / total} for f, n in by_leaf.most_common(top)]}


def py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(python_exe()).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return exe


def profile(repo: Path, name: str, size: int, seconds: float, native: bool, extra_args: Sequence[str],
            cores: str | None, client_cores: str | None, label: str, gil: bool = False) -> dict[str, Any]:
    images = synthetic_images(8, size, seed=7)
    payloads = [oip_tensor_request(name, images[i:i + 1]) for i in range(len(images))]
    with serve(repo, threads=1, cores=cores, max_batch_size=16, max_queue_delay_ms=2.0,
               extra_args=extra_args, log_name=f"profile-{label}") as server:
        target = Target.grpc(server["address"], payloads)
        run_load(target, 16, max_requests=10 ** 6, max_seconds=1.0, cores=client_cores)   # warm-up
        out = Path(tempfile.mkstemp(suffix=".txt")[1])
        command = [py_spy(), "record", "--pid", str(server["pid"]), "--duration", str(int(seconds)),
                   "--rate", "250", "--format", "raw", "--nolineno", "-o", str(out)]
        # --native needs to pause the process for each sample; Python frames alone can be read without.
        command.append("--native" if native else "--nonblocking")
        if gil:
            command.append("--gil")
        recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        before = cpu_seconds(server["pid"])
        result = run_load(target, 16, max_requests=10 ** 6, max_seconds=seconds - 1, cores=client_cores)
        cpu = cpu_seconds(server["pid"]) - before
        _, errors = recorder.communicate(timeout=120)
        if recorder.returncode != 0 or not out.exists() or not out.stat().st_size:
            raise RuntimeError(f"py-spy failed ({recorder.returncode}): {errors[-2000:]}")
        summary = summarise_raw(out)
        out.unlink()
    summary.update(label=label, extra_args=list(extra_args), throughput=result.throughput,
                   p50_ms=result.p50_ms, errors=result.errors,
                   server_cpu_ms_per_request=cpu * 1000.0 / max(result.requests + result.errors, 1))
    print(f"[{label}] {result.throughput:.0f} req/s, server CPU {summary['server_cpu_ms_per_request']:.2f} ms/req, "
          f"{summary['samples']} samples", flush=True)
    for row in summary["categories"]:
        print(f"  {row['share']:6.1%}  {row['category']}", flush=True)
    return summary


def markdown(results: dict[str, Any]) -> str:
    mode = ("`--native`: C/C++ frames too, each sample briefly pauses the server" if results.get("native")
            else "`--nonblocking`, Python frames" + (", `--gil`" if results.get("gil") else ""))
    parts = [f"py-spy ({mode}; 250 Hz; busy threads only) on `histoedge serve --threads 1` pinned to core "
             f"`{results['pinning']['server']}`, serving the {results['size']} px int8 ensemble at c=16 (one UINT8 image "
             f"per gRPC ModelInfer request) from the load generator on core `{results['pinning']['client']}`, "
             f"{results['seconds']:g} s per profile. Each sample is given to the first category that matches "
             f"its innermost frame (so onnxruntime kernels called from the batcher count as the model). "
             f"Sampling adds overhead of its own: compare the shares, not the absolute req/s. "
             + ("With `--gil` only samples of the thread holding the GIL count: where the Python work goes "
                "(onnxruntime releases the GIL while it runs). "
                if results.get("gil") else
                "py-spy counts a thread as busy unless it sleeps in a system call, so threads that were woken "
                "and wait for the core or the GIL count too: the hand-off shares include that waiting. ")
             + "See server_overhead_64.md for what the numbers add up to.\n"]
    for run in results["profiles"]:
        parts.append(f"**{run['label']}** (`{' '.join(run['extra_args']) or 'defaults'}`): {run['throughput']:.0f} req/s, "
                     f"server CPU {run['server_cpu_ms_per_request']:.2f} ms per request, {run['samples']} samples\n")
        parts.append(md_table(["where (self time)", "share"], [[r["category"], f"{r['share']:.1%}"]
                                                              for r in run["categories"]]))
        parts.append("\nInnermost frames (with their caller):\n")
        parts.append(md_table(["frame", "share"], [[f"`{r['frame'][:160]}`", f"{r['share']:.1%}"]
                                                   for r in run["leaves"]]) + "\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="model repository (default: the 64 px int8 ensemble)")
    parser.add_argument("--model", help="model name in --repo")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--native", action="store_true",
                        help="C/C++ frames too; py-spy then pauses the server for every sample, which distorts a "
                             "busy server (the committed profiles are Python frames only)")
    parser.add_argument("--gil", action="store_true",
                        help="only samples holding the GIL: where the Python work goes (the model releases it)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=ARGS",
                        help="also profile the server with these extra serve flags, e.g. 'no-monitoring=--no-monitoring'")
    parser.add_argument("--out", default="server_profile_64", help="results file stem under bench/results/")
    args = parser.parse_args(argv)
    info = machine_info()
    cores, client_cores = core_split()
    if args.repo:
        repo, name = args.repo.resolve(), args.model
        name = name or next(p.name for p in sorted(repo.iterdir()) if p.is_dir())
        from bench.bench_peers import image_size
        from bench.artifacts import onnx_path
        version = max(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
        size = image_size(onnx_path(repo, name, version))
    else:
        name, size = "ensemble64", 64
        repo = ensure_repo(ensure_run(64, 4), name, "int8")
    pin_self(client_cores)
    variants = [("defaults", [])] + [(v.split("=", 1)[0], v.split("=", 1)[1].split()) for v in args.variant]
    profiles = [profile(repo, name, size, args.seconds, args.native, extra, cores, client_cores, label,
                        args.gil) for label, extra in variants]
    results = {"machine": info, "pinning": {"server": cores, "client": client_cores}, "size": size,
               "seconds": args.seconds, "profiles": profiles, "native": args.native, "gil": args.gil}
    write_results(args.out, results, f"Where `histoedge serve` spends its CPU at {size} px, c=16 (py-spy)",
                  markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
