"""Shared pieces of the benchmarks: paths, machine facts, CPU pinning, result files, a server process.

Every benchmark writes ``bench/results/<name>.json`` (numbers) and ``<name>.md`` (a
section of the README's performance chapter) through :func:`write_results`, and
states each target with :func:`check`, which prints ``OK`` or ``MISSED`` plainly.

Example::

    info = machine_info()
    verdict = check("server / raw onnxruntime", 0.91, ">=", 0.85)
    write_results("serving", {"machine": info, "checks": [verdict]}, "| ... |")
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"


# ----------------------------------------------------------------------------- machine facts

def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Facts needed to compare numbers across machines (read without importing TF)."""
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": _package_version("onnxruntime"),
        "tensorflow": _package_version("tensorflow-cpu") if _package_version("tensorflow-cpu") != "not installed"
        else _package_version("tensorflow"),
        "keras": _package_version("keras"),
        "grpcio": _package_version("grpcio"),
        "numpy": _package_version("numpy"),
        "load_average_at_start": os.getloadavg()[0],
    }


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['date_utc']}; {info['cpu']}, {info['cores_usable']} usable cores; "
            f"Python {info['python']}, onnxruntime {info['onnxruntime']}, TensorFlow {info['tensorflow']} "
            f"(Keras {info['keras']}), grpcio {info['grpcio']}; 1-min load average at start "
            f"{info['load_average_at_start']:.2f}")


# ----------------------------------------------------------------------------- pinning

def core_split() -> tuple[str | None, str | None]:
    """(server cores, client cores) for ``taskset -c``; ``(None, None)`` when pinning is impossible.

    The system under test (server, raw onnxruntime, seed endpoint) gets the first usable
    core and the load generator the second, so every measured server runs on the same
    single core with one compute thread and ratios compare like with like.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return None, None
    return str(cores[0]), str(cores[1])


def pinned(command: Sequence[str], cores: str | None) -> list[str]:
    return ["taskset", "-c", cores, *command] if cores else list(command)


def pin_self(cores: str | None) -> None:
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


# ----------------------------------------------------------------------------- verdicts and files

def check(name: str, value: float | None, op: str, target: float, unit: str = "",
          why: str | None = None) -> dict[str, Any]:
    """Compare ``value`` with ``target`` and print one line ending in OK or MISSED.

    ``why``: the reason in plain words, kept (and printed) only when the target is missed.
    """
    if value is None:
        ok = False
    elif op == ">=":
        ok = value >= target
    elif op == ">":
        ok = value > target
    elif op == "<":
        ok = value < target
    elif op == "<=":
        ok = value <= target
    else:
        raise ValueError(f"unknown comparison {op!r}")
    shown = "n/a" if value is None else f"{value:.3g}{unit}"
    verdict = "OK" if ok else "MISSED"
    print(f"  {name}: {shown} (target {op} {target:g}{unit}) {verdict}", flush=True)
    result = {"name": name, "value": value, "op": op, "target": target, "unit": unit, "ok": ok}
    if why and not ok:
        print(f"    why: {why}", flush=True)
        result["why"] = why
    return result


def checks_table(checks: Sequence[dict[str, Any]]) -> str:
    rows = ["| ratio | measured | target | verdict |", "|---|---|---|---|"]
    for c in checks:
        shown = "n/a" if c["value"] is None else f"{c['value']:.3g}{c['unit']}"
        rows.append(f"| {c['name']} | {shown} | {c['op']} {c['target']:g}{c['unit']} | "
                    f"{'OK' if c['ok'] else '**MISSED**'} |")
    return "\n".join(rows)


def missed_reasons(checks: Sequence[dict[str, Any]]) -> str:
    """Markdown bullets giving the reason for each missed target; rows sharing a reason share a bullet."""
    reasons: dict[str, list[str]] = {}
    for c in checks:
        if not c["ok"] and c.get("why"):
            reasons.setdefault(c["why"], []).append(c["name"])
    if not reasons:
        return ""
    bullets = [f"- {', '.join(f'*{name}*' for name in names)}: {why}" for why, names in reasons.items()]
    return "\n".join(["Why the missed targets are missed:\n", *bullets])


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], title: str, body: str, quick: bool = False) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` (``<name>.quick.*`` for smoke runs)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.quick" if quick else name
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    header = f"### {title}\n\n_Measured {machine_line(data['machine'])}._\n"
    if quick:
        header += "\n_Smoke run (`--quick`): counts too small for the numbers to mean anything._\n"
    path = RESULTS_DIR / f"{stem}.md"
    path.write_text(header + "\n" + body.strip() + "\n")
    print(f"wrote {path} and {path.with_suffix('.json')}", flush=True)
    return path


def add_output_options(parser, *, json_help: str | None = "also write the figures here") -> None:
    """``--out`` (markdown) and, unless ``json_help`` is None, ``--json`` for the evaluation scripts,
    which print their table and write it only where asked (their results are named by the runs)."""
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    if json_help is not None:
        parser.add_argument("--json", type=Path, help=json_help)


def emit(args, text: str, data: Any = None) -> None:
    """Print ``text``; write it to ``args.out`` and ``data`` to ``args.json`` where those were given."""
    print(text)
    for path, content in ((getattr(args, "out", None), text),
                          (getattr(args, "json", None), None if data is None else json.dumps(data, indent=2) + "\n")):
        if path is not None and content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)


# ----------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and its children, in MiB (Linux /proc)."""
    total_kb = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, in seconds.

    CPU time per request is robust to other load on the machine, unlike wall-clock
    throughput: a busy neighbour slows the server down but does not make each request
    cost more CPU.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and all its descendants (a peer may run workers in child processes)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu_seconds(current)
        for task in Path(f"/proc/{current}/task").glob("*") if Path(f"/proc/{current}/task").exists() else []:
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


WARMUP = 2  # un-timed requests per client before each measured run


def measured_load(target, concurrency: int, pid: int, *, max_requests: int, max_seconds: float,
                  cores: str | None, cpu=cpu_seconds, metrics_port: int | None = None) -> dict[str, Any]:
    """``run_load`` plus the server's CPU milliseconds per request (robust to other load on the machine).

    ``cpu`` reads the server's CPU seconds: :func:`cpu_seconds` for one process,
    :func:`tree_cpu_seconds` for a server that runs workers in child processes.
    ``metrics_port`` (histoedge): scraped before the CPU is read, because a scrape waits for the
    monitoring checks still queued after the last answer, so their CPU is counted; the images
    monitoring skipped meanwhile are reported as ``monitoring_skipped_images``.
    """
    from bench.loadgen import run_load

    skipped_before = _skipped_images(metrics_port)
    before = cpu(pid)
    result = run_load(target, concurrency, max_requests=max_requests, max_seconds=max_seconds,
                      warmup=WARMUP, cores=cores).to_dict()
    skipped = _skipped_images(metrics_port)
    served = result["requests"] + result["errors"] + WARMUP * concurrency
    result["server_cpu_ms_per_request"] = (cpu(pid) - before) * 1000.0 / max(served, 1)
    if metrics_port is not None:
        result["monitoring_skipped_images"] = skipped - skipped_before
    return result


def _skipped_images(metrics_port: int | None) -> float:
    """``histoedge_quality_skipped_images_total`` summed over versions (0 without a port)."""
    if metrics_port is None:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text(metrics_port).splitlines()
               if line.startswith("histoedge_quality_skipped_images_total"))


def python_exe() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def histoedge_command() -> list[str]:
    """How to run ``histoedge``; ``HISTOEDGE_CMD`` overrides it (e.g. to measure another install)."""
    if os.environ.get("HISTOEDGE_CMD"):
        return shlex.split(os.environ["HISTOEDGE_CMD"])
    script = Path(python_exe()).parent / "histoedge"  # the console script of the venv, if installed
    return [str(script)] if script.exists() else [python_exe(), "-m", "histoedge"]


def run_checked(command: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a command; on failure print its tail and raise."""
    result = subprocess.run(list(command), capture_output=True, text=True, cwd=REPO_ROOT,
                            env=env or quiet_env())
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{tail}")


def quiet_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@contextlib.contextmanager
def serve(repo: Path, *, threads: int = 1, max_batch_size: int = 16, max_queue_delay_ms: float = 2.0,
          cores: str | None = None, extra_args: Sequence[str] = (), log_name: str = "server",
          ready_timeout: float = 120.0, http: bool = False,
          command_prefix: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Start ``histoedge serve`` pinned to ``cores``; yield ``{"address", "pid", "metrics_port"}``.

    With ``http`` the REST port is on too and ``"http_address"`` is in the dict;
    ``command_prefix`` runs another ``histoedge`` (default: :func:`histoedge_command`).
    """
    port, metrics_port = free_port(), free_port()
    http_port = free_port() if http else 0
    command = pinned([*(command_prefix or histoedge_command()), "serve", "--repo", str(repo), "--host", "127.0.0.1",
                      "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port),
                      "--threads", str(threads), "--max-batch-size", str(max_batch_size),
                      "--max-queue-delay-ms", str(max_queue_delay_ms), *extra_args], cores)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path = CACHE_DIR / f"{log_name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   env=quiet_env())
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(address, process, log_path, ready_timeout)
        yield {"address": address, "pid": process.pid, "metrics_port": metrics_port, "log": str(log_path),
               "http_address": f"127.0.0.1:{http_port}" if http else None}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(address: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1.0).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"server at {address} not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def histogram_mean(before: str, after: str, metric: str) -> float | None:
    """Mean of the Prometheus histogram ``metric`` over what it observed between two scrapes,
    summed over all its label sets; None if it observed nothing."""
    def sums(text: str) -> tuple[float, float]:
        total = count = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{metric}_(sum|count)(?:\{{[^}}]*\}})?\s+(\S+)$", line)
            if match:
                if match.group(1) == "sum":
                    total += float(match.group(2))
                else:
                    count += float(match.group(2))
        return total, count
    (total_before, count_before), (total_after, count_after) = sums(before), sums(after)
    count = count_after - count_before
    return (total_after - total_before) / count if count > 0 else None


def metrics_text(metrics_port: int) -> str:
    """The server's Prometheus text, or an empty string."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""
