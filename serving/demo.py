"""``histoedge demo``: the whole product on the built-in synthetic dataset.

Each step runs the real ``histoedge`` subcommand in a child process, exactly as
a user would, so the demo imports no stage itself.  Re-running it reuses what
earlier runs finished: training resumes, and an export of the same run is
reused instead of adding another model version.

Example::

    histoedge demo --workdir demo
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from histoedge import HistoedgeError
from histoedge.export.manifest import MANIFEST_FILE, version_folders

MODEL_NAME = "breast"
HEALTH_TIMEOUT_S = 120.0


def _histoedge(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "histoedge", *args]
    print("$ histoedge " + " ".join(args), flush=True)
    result = subprocess.run(command, text=True, capture_output=capture)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise HistoedgeError(f"'histoedge {args[0]}' failed with exit code {result.returncode}"
                             + (f": {detail[0]}" if detail else ""))
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _existing_export(repo: Path, run: Path, precision: str) -> Path | None:
    """The newest version in ``repo`` exported from ``run`` at ``precision``, if any."""
    for version_dir in reversed(version_folders(repo / MODEL_NAME).values()):
        try:
            manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("precision") == precision and \
                Path(manifest.get("source", "")).resolve() == run.resolve():
            return version_dir
    return None


def _held_out_images(run: Path, count: int) -> list[str]:
    """Test-split images, alternating classes, so the demo shows both outcomes."""
    by_label: dict[str, list[str]] = {}
    with open(run / "splits.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test":
                by_label.setdefault(row["label"], []).append(row["path"])
    picked: list[str] = []
    while len(picked) < count and any(by_label.values()):
        for paths in by_label.values():
            if paths and len(picked) < count:
                picked.append(paths.pop(0))
    return picked


def _wait_healthy(server: subprocess.Popen, address: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise HistoedgeError(f"the server exited early with code {server.returncode}")
        probe = subprocess.run([sys.executable, "-m", "histoedge", "health", "--server", address],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return
        time.sleep(0.5)
    raise HistoedgeError(f"the server at {address} was not SERVING after {HEALTH_TIMEOUT_S:.0f} s")


def _print_metrics(run: Path, version_dir: Path) -> None:
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text())
    print(f"\nModel {manifest['name']} version {manifest['version']} ({manifest['precision']}), "
          f"decision threshold {manifest.get('threshold')}; test split metrics:")
    metrics = manifest.get("metrics", {})
    columns = [name for name in ("fp32", manifest["precision"]) if name in metrics]
    print(f"{'metric':<12}" + "".join(f"{name:>10}" for name in dict.fromkeys(columns)))
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece"):
        values = [metrics[name].get(key) for name in dict.fromkeys(columns)]
        if any(isinstance(v, (int, float)) for v in values):
            print(f"{key:<12}" + "".join(f"{v:>10.4f}" if isinstance(v, (int, float)) else f"{'-':>10}"
                                         for v in values))
    print(f"Full evaluation report: {run / 'report.md'}")


def cli_demo(args) -> int:
    workdir = Path(args.workdir).resolve()
    data, run, repo = workdir / "data", workdir / "run", workdir / "models"
    started = time.monotonic()

    if not (data / "BreaKHis_v1").exists():
        _histoedge("data", "synth", "--out", str(data), "--n", str(args.n),
                   "--size", str(max(args.image_size, 64)))
    _histoedge("train", "--ensemble", "--data", str(data), "--out", str(run),
               "--image-size", str(args.image_size), "--quiet")
    version_dir = _existing_export(repo, run, args.precision)
    if version_dir is None:
        _histoedge("export", "--run", str(run), "--repo", str(repo), "--name", MODEL_NAME,
                   "--precision", args.precision)
        version_dir = _existing_export(repo, run, args.precision)
        if version_dir is None:
            raise HistoedgeError(f"export finished but no {args.precision} version of "
                                 f"{MODEL_NAME} from {run} is in {repo}")

    port, metrics_port, http_port = _free_port(), _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "histoedge", "serve", "--repo", str(repo), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(server, address)
        images = _held_out_images(run, args.classify)
        print(f"\nStatus page (while the demo runs): http://127.0.0.1:{http_port}/")
        print(f"Classifying {len(images)} held-out test images over gRPC at {address}:")
        _histoedge("classify", "--server", address, "--model", MODEL_NAME, *images)
        _print_metrics(run, version_dir)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; server exited with "
          f"code {server.returncode}.")
    return 0 if server.returncode == 0 else 1
