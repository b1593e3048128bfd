"""histoedge next to its peers: Seldon MLServer and KServe serving the same ONNX file, side by side.

Every server under test runs pinned to the same core with one onnxruntime thread (same
session options as ``histoedge serve --threads 1``) and takes the same pre-serialised
Open Inference Protocol gRPC requests (``ModelInfer``, one UINT8 [1, H, W, 3] image in
``raw_input_contents``) from the same closed-loop load generator on the other core.  The
peers run from their own virtual environments (``bench/run_peers.sh`` installs them into
``bench/.cache/peers/``) with the wrappers in ``bench/peer_models/``.

Measured, in interleaved rounds (raw onnxruntime, then every server at concurrency 1 and
16, the order rotating each round): throughput at c=16 as a fraction of raw onnxruntime's
best batch in the same round, p50/p99 at c=1 and c=16, the p50 overhead at c=1 over raw
batch 1, and the server process tree's CPU milliseconds per request; medians over rounds.

Run::

    bash bench/run_peers.sh                               # installs the peers once, then this
    python -m bench.bench_peers --peers bench/.cache/peers [--repo DIR --model NAME] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bench import profiling
from bench.artifacts import ensure_repo, ensure_run, onnx_path, synthetic_images
from bench.common import (BENCH_DIR, CACHE_DIR, REPO_ROOT, check, checks_table, core_split, free_port,
                          histoedge_command, machine_info, md_table, measured_load, pin_self, pinned, python_exe, quiet_env,
                          serve, tree_cpu_seconds, write_results)
from bench.loadgen import Target, oip_tensor_request
from histoedge.export.manifest import IMAGE, PROBABILITIES

FULL = {"size": 64, "members": 4, "rounds": 3, "c1_seconds": 3.0, "c16_seconds": 4.0, "max_requests": 6000,
        "raw_seconds": 2.0}
QUICK = {"size": 64, "members": 4, "rounds": 1, "c1_seconds": 0.5, "c16_seconds": 0.5, "max_requests": 50,
         "raw_seconds": 0.3}
RAW_BATCHES = (1, 4, 8, 16)
CONCURRENCY = (1, 16)
THREADS = 1
MAX_BATCH, QUEUE_DELAY_MS = 16, 2.0    # the same batching window for histoedge and MLServer
PEER_MODELS = BENCH_DIR / "peer_models"
DEFAULT_SYSTEMS = ("histoedge", "mlserver_batching", "mlserver_batching_worker", "mlserver", "kserve",
                   "kserve_quiet")


@dataclass(frozen=True)
class System:
    """One server under test: ``start()`` is a context manager yielding {"address", "pid"} once it is ready."""

    key: str
    label: str
    start: Callable[[], contextlib.AbstractContextManager]
    note: str


# ----------------------------------------------------------------------------- process trees

@contextlib.contextmanager
def peer_process(command: Sequence[str], *, address: str, log_name: str, cores: str | None,
                 env: dict[str, str], ready_timeout: float = 180.0) -> Iterator[dict[str, Any]]:
    """Start a peer server pinned to ``cores``; yield once its gRPC ServerReady answers true."""
    from bench.common import _wait_ready

    log_path = CACHE_DIR / f"{log_name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(pinned(list(command), cores), stdout=log, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        _wait_ready(address, process, log_path, ready_timeout)
        yield {"address": address, "pid": process.pid, "log": str(log_path)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)     # the peer's own session: its workers too
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()


def peer_env(venv: Path) -> dict[str, str]:
    env = quiet_env()
    env["PYTHONPATH"] = str(PEER_MODELS)   # the wrappers, never histoedge
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return env


def mlserver(peers: Path, model: Path, name: str, cores: str | None, batching: bool,
             workers: int = 0) -> contextlib.AbstractContextManager:
    """MLServer with the onnxruntime runtime, access logs off; inference in-process (``parallel_workers: 0``)
    or in ``workers`` inference processes (MLServer's default is 1), all on the same pinned core."""
    venv = peers / "mlserver-venv"
    folder = CACHE_DIR / "peers" / "run" / f"mlserver-{'batching' if batching else 'nobatching'}-w{workers}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / name).mkdir(parents=True)
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "debug": False, "parallel_workers": workers, "host": "127.0.0.1", "grpc_port": port,
        "http_port": free_port(), "metrics_port": free_port()}))
    settings: dict[str, Any] = {"name": name, "implementation": "mlserver_onnx.OnnxRuntimeModel",
                                "parameters": {"uri": str(model)}}
    if batching:
        settings.update(max_batch_size=MAX_BATCH, max_batch_time=QUEUE_DELAY_MS / 1000.0)
    (folder / name / "model-settings.json").write_text(json.dumps(settings))
    return peer_process([str(venv / "bin" / "mlserver"), "start", str(folder)], address=f"127.0.0.1:{port}",
                        log_name=folder.name, cores=cores, env=peer_env(venv))


def kserve(peers: Path, model: Path, name: str, cores: str | None, latency_logging: bool) -> contextlib.AbstractContextManager:
    """KServe's ModelServer with a ``kserve.Model`` wrapping onnxruntime; one worker."""
    venv = peers / "kserve-venv"
    port = free_port()
    command = [str(venv / "bin" / "python"), str(PEER_MODELS / "kserve_onnx.py"), "--model_name", name,
               "--model_path", str(model), "--grpc_port", str(port), "--http_port", str(free_port()),
               "--workers", "1", "--enable_latency_logging", str(latency_logging).lower()]
    return peer_process(command, address=f"127.0.0.1:{port}", cores=cores, env=peer_env(venv),
                        log_name=f"kserve-{'latency-log' if latency_logging else 'quiet'}")


def baseline_command(ref: str) -> tuple[list[str], str]:
    """A ``histoedge`` command line running the code of git ``ref`` (for before/after runs), and its commit."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    site = CACHE_DIR / "baseline" / sha[:12]
    if not (site / "histoedge" / "serving" / "__init__.py").exists():
        tmp = site.with_name(site.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "src").mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha, "histoedge", "serving", "export", "training"],
                                 cwd=REPO_ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp / "src")], input=archive, check=True)
        # The installed layout: serving/ -> histoedge/serving/ and so on (pyproject's package-dir).
        (tmp / "src" / "histoedge").rename(tmp / "histoedge")
        for stage in ("serving", "export", "training"):
            (tmp / "src" / stage).rename(tmp / "histoedge" / stage)
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
    code = f"import sys; sys.path.insert(0, {str(site)!r}); from histoedge.cli import main; sys.exit(main())"
    return [python_exe(), "-c", code], sha


def systems(peers: Path, repo: Path, model: Path, name: str, cores: str | None,
            baseline: str | None = None) -> list[System]:
    extra = []
    if baseline:
        command, sha = baseline_command(baseline)
        extra.append(System(
            "histoedge_baseline", f"histoedge at {sha[:8] if sha.startswith(baseline) else baseline}",
            lambda: serve(repo, threads=THREADS, cores=cores, max_batch_size=MAX_BATCH,
                          max_queue_delay_ms=QUEUE_DELAY_MS, log_name="peers-histoedge-baseline",
                          command_prefix=command),
            f"the same flags, the code of `{baseline}` ({sha[:12]}): before/after in one run"))
    extra.append(System(
        "histoedge_no_monitoring", "histoedge --no-monitoring",
        lambda: serve(repo, threads=THREADS, cores=cores, max_batch_size=MAX_BATCH, max_queue_delay_ms=QUEUE_DELAY_MS,
                      extra_args=["--no-monitoring"], log_name="peers-histoedge-no-monitoring"),
        "the same flags plus `--no-monitoring` (what the quality checks and drift features cost)"))
    extra.append(System(
        "histoedge_sched_batch", "histoedge under SCHED_BATCH",
        lambda: serve(repo, threads=THREADS, cores=cores, max_batch_size=MAX_BATCH, max_queue_delay_ms=QUEUE_DELAY_MS,
                      log_name="peers-histoedge-sched-batch",
                      command_prefix=["chrt", "--batch", "0", *histoedge_command()]),
        "the same flags, started with `chrt --batch 0`: a thread it wakes does not preempt the waker"))
    return extra + [
        System("histoedge", "histoedge", lambda: serve(repo, threads=THREADS, cores=cores,
                                                        max_batch_size=MAX_BATCH, max_queue_delay_ms=QUEUE_DELAY_MS,
                                                        log_name="peers-histoedge"),
               f"`histoedge serve --threads 1 --max-batch-size {MAX_BATCH} --max-queue-delay-ms {QUEUE_DELAY_MS:g}` "
               "(defaults otherwise: monitoring on, `label` output added)"),
        System("mlserver_batching", "MLServer 1.7, adaptive batching",
               lambda: mlserver(peers, model, name, cores, batching=True),
               f"`max_batch_size {MAX_BATCH}`, `max_batch_time {QUEUE_DELAY_MS / 1000:g}` s, `parallel_workers 0`, "
               "`debug false` (in a separate 3 s check at c=16 its batches held 1.8 requests on average: the "
               "model runs inside the event loop, which cannot queue new requests meanwhile)"),
        System("mlserver_batching_worker", "MLServer 1.7, adaptive batching, 1 worker process",
               lambda: mlserver(peers, model, name, cores, batching=True, workers=1),
               "as above but MLServer's default `parallel_workers 1`: the model runs in a worker process (same "
               "core), so the event loop that forms batches is not blocked while a batch runs"),
        System("mlserver", "MLServer 1.7, no batching", lambda: mlserver(peers, model, name, cores, batching=False),
               "`parallel_workers 0`, `debug false`"),
        System("kserve", "KServe 0.21", lambda: kserve(peers, model, name, cores, latency_logging=True),
               "defaults (a latency log line per request)"),
        System("kserve_quiet", "KServe 0.21, no latency log",
               lambda: kserve(peers, model, name, cores, latency_logging=False), "`--enable_latency_logging false`"),
    ]


# ----------------------------------------------------------------------------- answers

def probabilities(address: str, payload: bytes, attempts: int = 30) -> np.ndarray:
    """One request through the server; its ``probabilities`` output (retries while the model loads)."""
    import grpc
    from tritonclient.grpc import service_pb2

    last: Exception | None = None
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(attempts):
            try:
                response = service_pb2.ModelInferResponse.FromString(call(payload, timeout=30))
                break
            except grpc.RpcError as error:
                last = error
                time.sleep(0.5)
        else:
            raise RuntimeError(f"no answer from {address}: {last}")
    for index, output in enumerate(response.outputs):
        if output.name == PROBABILITIES:
            shape = tuple(output.shape)
            if response.raw_output_contents:
                return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(shape)
            return np.asarray(output.contents.fp32_contents, np.float32).reshape(shape)
    raise RuntimeError(f"{address} answered without '{PROBABILITIES}': {[o.name for o in response.outputs]}")


def image_size(model: Path) -> int:
    """The side of the square images the graph takes (its ``image`` input is [N, H, W, 3])."""
    import onnxruntime as ort

    shape = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    return int(shape[1])


def raw_probabilities(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run([PROBABILITIES], {IMAGE: images})[0]


# ----------------------------------------------------------------------------- measuring

def measured(target: Target, concurrency: int, pid: int, *, seconds: float, max_requests: int,
             cores: str | None, metrics_port: int | None = None) -> dict[str, Any]:
    return measured_load(target, concurrency, pid, max_requests=max_requests, max_seconds=seconds, cores=cores,
                         cpu=tree_cpu_seconds, metrics_port=metrics_port)


def measure(chosen: list[System], model: Path, images: np.ndarray, payloads: list[bytes], cfg: dict,
            cores: str | None, client_cores: str | None) -> dict[str, Any]:
    expected = raw_probabilities(model, images[:1])
    rounds: list[dict[str, Any]] = []
    agreement: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for system in chosen:
            print(f"starting {system.label}", flush=True)
            servers[system.key] = stack.enter_context(system.start())
            agreement[system.key] = float(np.abs(probabilities(servers[system.key]["address"], payloads[0])
                                                 - expected).max())
            print(f"  max |probabilities - raw onnxruntime| = {agreement[system.key]:.2e}", flush=True)
        for index in range(cfg["rounds"]):
            current: dict[str, Any] = {"load_average": os.getloadavg()[0], "systems": {}, "raw": {}}
            print(f"round {index + 1}/{cfg['rounds']} (load {current['load_average']:.1f})", flush=True)
            order = chosen[index % len(chosen):] + chosen[:index % len(chosen)]
            for system in order:
                # Raw onnxruntime right before each server, so that each ratio compares two runs
                # seconds apart: the load on this machine swings by 2x within a minute.
                raw = profiling.raw_onnxruntime(model, images, batch_sizes=RAW_BATCHES, threads=THREADS,
                                                cores=cores, max_seconds=cfg["raw_seconds"])
                best = max(raw, key=lambda r: r["images_per_s"])
                server = servers[system.key]
                target = Target.grpc(server["address"], payloads)
                current["raw"][system.key] = raw
                runs: dict[int, Any] = {}
                for concurrency in CONCURRENCY:
                    seconds = cfg["c1_seconds"] if concurrency == 1 else cfg["c16_seconds"]
                    runs[concurrency] = measured(target, concurrency, server["pid"], seconds=seconds,
                                                 max_requests=cfg["max_requests"], cores=client_cores,
                                                 metrics_port=server.get("metrics_port") if
                                                 system.key.startswith("histoedge") else None)
                current["systems"][system.key] = runs
                print(f"  {system.label:31s} raw best {best['images_per_s']:4.0f}/s, b1 {raw[0]['p50_ms']:.2f} ms | "
                      f"c=1 p50 {runs[1]['p50_ms'] or 0:6.2f} ms, c=16 {runs[16]['throughput']:4.0f} req/s "
                      f"({runs[16]['throughput'] / best['images_per_s']:.2f} of raw) p99 {runs[16]['p99_ms'] or 0:6.1f} ms, "
                      f"CPU {runs[16]['server_cpu_ms_per_request']:.2f} ms/req, "
                      f"errors {runs[1]['errors'] + runs[16]['errors']}", flush=True)
            rounds.append(current)
    return {"rounds": rounds, "agreement_max_abs": agreement}


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def lowest_cpu(raw: list[dict[str, Any]]) -> float:
    """Raw onnxruntime's CPU per image at its cheapest batch size (the CPU-time "best batch")."""
    return min(row["cpu_ms_per_image"] for row in raw)


def summarise(chosen: list[System], measured_rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds; ratios and overheads are taken against the raw run next to each server run."""
    def raw_row(r, batch):
        return next(row for row in r["raw"] if row["batch_size"] == batch)

    pairs = [{"raw": raw} for r in measured_rounds for raw in r["raw"].values()]
    raw_best = [max(runs["raw"], key=lambda row: row["images_per_s"]) for runs in pairs]
    summary: dict[str, Any] = {"raw": {
        "best_batch": int(np.median([row["batch_size"] for row in raw_best])),
        "best_images_per_s": median(row["images_per_s"] for row in raw_best),
        "best_cpu_ms_per_image": median(lowest_cpu(runs["raw"]) for runs in pairs),
        "batch1_p50_ms": median(raw_row(runs, 1)["p50_ms"] for runs in pairs),
        "batch1_cpu_ms_per_image": median(raw_row(runs, 1)["cpu_ms_per_image"] for runs in pairs),
        "batch1_p50_spread": (max(raw_row(runs, 1)["p50_ms"] for runs in pairs)
                              / max(min(raw_row(runs, 1)["p50_ms"] for runs in pairs), 1e-9)),
    }}
    for system in chosen:
        per_round = [(r["systems"][system.key], max(r["raw"][system.key], key=lambda row: row["images_per_s"]),
                      raw_row({"raw": r["raw"][system.key]}, 1)) for r in measured_rounds]
        summary[system.key] = {
            "label": system.label,
            "throughput_c16": median(s[16]["throughput"] for s, _, _ in per_round),
            "fraction_of_raw_c16": median(s[16]["throughput"] / best["images_per_s"] for s, best, _ in per_round),
            # The same on a CPU-time basis: raw's CPU per image at its best batch over the server's CPU per
            # request. Other load slows everything down but does not make a request cost more CPU.
            "cpu_fraction_of_raw_c16": median(lowest_cpu(r["raw"][system.key]) / r["systems"][system.key][16]
                                              ["server_cpu_ms_per_request"] for r in measured_rounds),
            "p50_c1_ms": median(s[1]["p50_ms"] for s, _, _ in per_round),
            "p99_c1_ms": median(s[1]["p99_ms"] for s, _, _ in per_round),
            "p50_c16_ms": median(s[16]["p50_ms"] for s, _, _ in per_round),
            "p99_c16_ms": median(s[16]["p99_ms"] for s, _, _ in per_round),
            "overhead_c1_p50_ms": median(s[1]["p50_ms"] - b1["p50_ms"] for s, _, b1 in per_round
                                         if s[1]["p50_ms"] is not None),
            "cpu_overhead_c1_ms": median(s[1]["server_cpu_ms_per_request"] - b1["cpu_ms_per_image"]
                                         for s, _, b1 in per_round),
            "cpu_ms_per_request_c1": median(s[1]["server_cpu_ms_per_request"] for s, _, _ in per_round),
            "cpu_ms_per_request_c16": median(s[16]["server_cpu_ms_per_request"] for s, _, _ in per_round),
            "errors": sum(s[c]["errors"] for s, _, _ in per_round for c in CONCURRENCY),
        }
    return summary


def derive(summary: dict[str, Any], size: int = 64) -> list[dict[str, Any]]:
    """The issue's 64 px serving targets, read from this side-by-side run, and histoedge against the best peer."""
    ours = summary["histoedge"]
    spread = summary["raw"].get("batch1_p50_spread", 1.0)
    # Raw onnxruntime runs in a freshly started process, which a busy scheduler serves later than a
    # long-running server: when its batch-1 latency swings this much, a latency difference means little.
    unreliable = f" (unreliable: raw batch-1 p50 varied {spread:.1f}x between runs)" if spread > 1.5 else ""
    peers = [v for k, v in summary.items() if k != "raw" and not k.startswith("histoedge")]
    # The 0.90 target is judged on CPU time: on a loaded machine the wall-clock fraction swings past
    # 1.0 and back within minutes (raw and the server never run at the same moment), while the
    # CPU a request costs does not depend on what else runs.  Both are in the table.
    why_c16, why_c1 = _why_missed(summary, peers)
    checks = [
        check(f"{size} px: histoedge / raw onnxruntime best batch at c=16 (CPU time)", ours["cpu_fraction_of_raw_c16"],
              ">=", 0.90, why=why_c16),
        check(f"{size} px: histoedge p50 at c=1 minus raw batch-1 p50" + unreliable, ours["overhead_c1_p50_ms"], "<=",
              1.0, " ms", why=why_c1),
        check(f"{size} px: histoedge CPU per request at c=1 minus raw batch-1 CPU per image", ours["cpu_overhead_c1_ms"],
              "<=", 1.0, " ms", why=why_c1),
    ]
    if "histoedge_baseline" in summary:
        checks.append(check(f"{size} px: {summary['histoedge_baseline']['label']} / this tree, CPU per request at c=16",
                            summary["histoedge_baseline"]["cpu_ms_per_request_c16"] / ours["cpu_ms_per_request_c16"],
                            ">=", 1.0))
    if peers:
        checks.append(check(f"{size} px: histoedge / fastest peer at c=16 (throughput)",
                            ours["throughput_c16"] / max(p["throughput_c16"] for p in peers), ">", 1.0))
        checks.append(check(f"{size} px: fastest peer / histoedge CPU per request at c=16",
                            min(p["cpu_ms_per_request_c16"] for p in peers) / ours["cpu_ms_per_request_c16"],
                            ">", 1.0))
    return checks


def _why_missed(summary: dict[str, Any], peers: list[dict[str, Any]]) -> tuple[str, str]:
    """The 64 px targets' misses in plain words, from the figures of this run."""
    ours, raw = summary["histoedge"], summary["raw"]
    outside = ours["cpu_ms_per_request_c16"] - raw["best_cpu_ms_per_image"]
    allowed = raw["best_cpu_ms_per_image"] / 0.90 - raw["best_cpu_ms_per_image"]
    cheapest = min(peers, key=lambda p: p["cpu_ms_per_request_c16"], default=None)
    peer = ("" if cheapest is None else
            f" The cheapest peer here, {cheapest['label']}, spends "
            f"{cheapest['cpu_ms_per_request_c16'] - raw['best_cpu_ms_per_image']:.2f} ms outside the model.")
    quiet = summary.get("histoedge_no_monitoring")
    monitoring = ("" if quiet is None else
                  f" Of that, the monitoring checks are {ours['cpu_ms_per_request_c16'] - quiet['cpu_ms_per_request_c16']:.2f}"
                  f" ms (the `--no-monitoring` server in the same rounds).")
    why_c16 = (f"At c=16 a request costs {ours['cpu_ms_per_request_c16']:.2f} CPU ms and the model "
               f"{raw['best_cpu_ms_per_image']:.2f} ms per image at raw onnxruntime's cheapest batch, so {outside:.2f} ms "
               f"of each request is spent outside the model, where 0.90 allows {allowed:.2f} ms.{monitoring} The rest "
               f"is gRPC's Python server (its polling thread and thread pool), the thread hand-offs to and from "
               f"the batcher, and the request path; bench/results/server_overhead_64.md has the py-spy profile."
               f"{peer} With a model this small, that cost is {outside / ours['cpu_ms_per_request_c16']:.0%} of a "
               f"request's CPU.")
    why_c1 = (f"At c=1 a request costs {ours['cpu_ms_per_request_c1']:.2f} CPU ms against raw onnxruntime's "
              f"{raw['batch1_cpu_ms_per_image']:.2f} ms at batch 1: the same transport, request path and monitoring "
              f"as above, with no batch to share them. bench/results/serving.md splits the c=1 overhead into those "
              f"parts, measured side by side.")
    return why_c16, why_c1


def peers_table(summary: dict[str, Any], keys: Sequence[str]) -> str:
    raw = summary["raw"]
    rows = [[f"raw onnxruntime (batch {raw['best_batch']} / batch 1)", raw["best_images_per_s"], 1.0, 1.0,
             raw["batch1_p50_ms"], "-", "-", "-", 0.0, 0.0, raw["batch1_cpu_ms_per_image"], raw["best_cpu_ms_per_image"]]]
    for key in keys:
        s = summary[key]
        rows.append([s["label"], s["throughput_c16"], s["fraction_of_raw_c16"], s["cpu_fraction_of_raw_c16"],
                     s["p50_c1_ms"], s["p99_c1_ms"], s["p50_c16_ms"], s["p99_c16_ms"], s["overhead_c1_p50_ms"],
                     s.get("cpu_overhead_c1_ms", "-"), s["cpu_ms_per_request_c1"], s["cpu_ms_per_request_c16"]])
    return md_table(["server", "img/s c=16", "/ raw best", "/ raw best (CPU)", "p50 c=1 ms", "p99 c=1 ms",
                     "p50 c=16 ms", "p99 c=16 ms", "c=1 overhead ms", "c=1 CPU overhead ms", "CPU ms/req c=1",
                     "CPU ms/req c=16"], rows)


def markdown(results: dict[str, Any], chosen: list[System]) -> str:
    s, cfg = results["summary"], results["config"]
    loads = ", ".join(f"{r['load_average']:.1f}" for r in results["rounds"])
    parts = [
        f"The same {results['image_size']} px int8 ensemble file (`{results['model']}`, {results['model_mb']:.1f} MB) served by "
        f"each server pinned to core `{results['pinning']['server']}` with one onnxruntime thread (same session "
        f"options everywhere), one UINT8 image per Open Inference Protocol gRPC `ModelInfer` request, pre-serialised, "
        f"from the same closed-loop load generator pinned to core `{results['pinning']['client']}`. "
        f"{cfg['rounds']} interleaved rounds (each server at c=1 for {cfg['c1_seconds']:g} s and c=16 for "
        f"{cfg['c16_seconds']:g} s right after raw onnxruntime at batch {', '.join(map(str, RAW_BATCHES))} on the "
        f"same core, the order of the servers rotating each round); medians over rounds. `/ raw best` and `c=1 "
        f"overhead` are taken against the raw run next to each server run; the raw row is the median of those. "
        f"CPU ms/req is the server's whole process tree (from /proc); the raw row gives CPU ms per image at batch 1 "
        f"and at its cheapest batch. `/ raw best (CPU)` is raw's CPU per image at its cheapest batch over the server's CPU "
        f"per request at c=16: the throughput fraction the server would reach with the core to itself, which other "
        f"load on the machine does not distort.\n",
        f"**Machine load:** 1-minute load average {loads} at the start of the rounds on "
        f"{results['machine']['cores_usable']} cores. {results.get('load_note', '')} Absolute numbers are noisy; "
        f"the ratios, measured side by side in one run, are what counts.\n",
        peers_table(s, [system.key for system in chosen]), "",
        "How each was run:\n",
        *[f"- {system.label}: {system.note}; answers agree with raw onnxruntime to "
          f"{results['agreement_max_abs'][system.key]:.1e}; errors {s[system.key]['errors']}." for system in chosen],
        "",
        *(peer_notes(results) if any(not s.key.startswith("histoedge") for s in chosen) else []),
        checks_table(results["checks"]), "",
    ]
    return "\n".join(parts)


def peer_notes(results: dict[str, Any]) -> list[str]:
    return [
        "Where the peers lose: MLServer unpacks `raw_input_contents` into a Python tuple of one integer per "
        "byte (`mlserver/raw.py`, 12,288 per 64 px image) and builds pydantic objects around it before NumPy "
        "sees the pixels, and its adaptive batcher adds asyncio queue hand-offs on top; KServe parses with "
        "`np.frombuffer` but wraps each request in its own `InferRequest`/`InferResponse` objects, Prometheus "
        "timers for pre/predict/postprocess and, by default, a log line. All three pay Python's gRPC server per "
        "request; histoedge merges requests into batches as MLServer does, with less Python around each request.\n",
        "The peers' wrappers are in `bench/peer_models/` (MLServer has no onnxruntime runtime of its own: a small "
        "`MLModel`; KServe: a `kserve.Model`); `bash bench/run_peers.sh` installs the peers into their own "
        f"virtual environments (MLServer {results['peer_versions'].get('mlserver', '?')}, KServe "
        f"{results['peer_versions'].get('kserve', '?')}, onnxruntime {results['peer_versions'].get('onnxruntime', '?')} "
        "in both, as ours) and regenerates this table.\n",
    ]


def venv_version(venv: Path, package: str) -> str:
    if not (venv / "bin" / "python").exists():
        return "not installed"
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          f"import importlib.metadata as m; print(m.version({package!r}))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "not installed"


def title(stem: str, results: dict[str, Any], chosen: list[System]) -> str:
    if stem == "peers":
        return "Peers: histoedge, MLServer and KServe on the same model file"
    return f"Side by side at {results['image_size']} px: {', '.join(s.label for s in chosen)}"


def render(quick: bool = False, stem: str = "peers") -> int:
    """Rewrite ``peers.md`` (and the summary in ``peers.json``) from the rounds already measured."""
    from bench.common import RESULTS_DIR

    results = json.loads((RESULTS_DIR / f"{stem}{'.quick' if quick else ''}.json").read_text())
    for r in results["rounds"]:          # JSON turned the concurrency keys into strings
        r["systems"] = {k: {int(c): run for c, run in v.items()} for k, v in r["systems"].items()}
    if "systems" not in results:         # written before the file listed them: the peers' defaults
        keys = list(results["rounds"][0]["systems"])
        results["systems"] = [{"key": s.key, "label": s.label, "note": s.note}
                              for s in systems(Path("."), Path("."), Path("."), "", None) if s.key in keys]
    chosen = [System(row["key"], row["label"], None, row["note"]) for row in results["systems"]]
    results["summary"] = summarise(chosen, results["rounds"])
    results["checks"] = derive(results["summary"], results["image_size"]) if "histoedge" in results["summary"] else []
    write_results(stem, results, title(stem, results, chosen), markdown(results, chosen), quick=quick)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, default=CACHE_DIR / "peers",
                        help="folder holding mlserver-venv/ and kserve-venv/ (bench/run_peers.sh makes them)")
    parser.add_argument("--repo", type=Path, help="a model repository to serve (default: a 64 px int8 ensemble "
                        "built from synthetic data into bench/.cache/)")
    parser.add_argument("--model", default=None, help="the model's name in --repo (default: its only model)")
    parser.add_argument("--only", default="", help="comma-separated systems: histoedge, mlserver_batching, "
                        "mlserver_batching_worker, mlserver, kserve, kserve_quiet (the default set), histoedge_no_monitoring, "
                        "histoedge_sched_batch, histoedge_baseline")
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also serve histoedge as of this commit (before/after a change, in the same rounds)")
    parser.add_argument("--out", default="peers", help="results file stem under bench/results/")
    parser.add_argument("--load-note", default="", help="a sentence about other load on the machine, for the md")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: recompute the summary and Markdown from the last results file")
    args = parser.parse_args(argv)
    if args.render:
        return render(args.quick, args.out)
    cfg = QUICK if args.quick else FULL
    info = machine_info()
    cores, client_cores = core_split()
    if args.repo:
        repo = args.repo.resolve()
        name = args.model or next(p.name for p in sorted(repo.iterdir()) if p.is_dir())
        version = max(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
        model = onnx_path(repo, name, version)
    else:
        name = f"ensemble{cfg['size']}"      # not seed64: bench_serving --quick caches a 2-member one
        repo = ensure_repo(ensure_run(cfg["size"], cfg["members"]), name, "int8")
        model = onnx_path(repo, name)
    pin_self(client_cores)
    missing = [v for v in ("mlserver-venv", "kserve-venv") if not (args.peers / v / ".installed").exists()]
    chosen = [s for s in systems(args.peers.resolve(), repo, model, name, cores, args.baseline)
              if (s.key in args.only.split(",") if args.only else s.key in DEFAULT_SYSTEMS + ("histoedge_baseline",))
              and not (s.key.startswith("mlserver") and "mlserver-venv" in missing)
              and not (s.key.startswith("kserve") and "kserve-venv" in missing)]
    if missing:
        print(f"not installed (run bash bench/run_peers.sh): {', '.join(missing)}", flush=True)
    images = synthetic_images(8, image_size(model), seed=7)
    payloads = [oip_tensor_request(name, images[i:i + 1]) for i in range(len(images))]
    results: dict[str, Any] = {
        "machine": info, "config": dict(cfg), "pinning": {"server": cores, "client": client_cores},
        "threads": THREADS, "model": str(model.relative_to(REPO_ROOT)) if model.is_relative_to(REPO_ROOT)
        else str(model), "model_mb": model.stat().st_size / 1e6, "load_note": args.load_note,
        "peer_versions": {"mlserver": venv_version(args.peers / "mlserver-venv", "mlserver"),
                          "kserve": venv_version(args.peers / "kserve-venv", "kserve"),
                          "onnxruntime": venv_version(args.peers / "kserve-venv", "onnxruntime")},
        "not_installed": missing, "image_size": image_size(model),
        "systems": [{"key": s.key, "label": s.label, "note": s.note} for s in chosen],
    }
    results.update(measure(chosen, model, images, payloads, cfg, cores, client_cores))
    results["summary"] = summarise(chosen, results["rounds"])
    results["checks"] = derive(results["summary"], results["image_size"]) if "histoedge" in results["summary"] else []
    write_results(args.out, results, title(args.out, results, chosen), markdown(results, chosen), quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
