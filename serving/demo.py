"""``histoedge demo``: the whole product on the built-in synthetic dataset.

Each step runs the real ``histoedge`` subcommand in a child process, exactly as
a user would, so the demo imports no stage itself.  Re-running it reuses what
earlier runs finished: training resumes, and an export of the same run is
reused instead of adding another model version.  A run left by a version of
histoedge with other training defaults cannot resume; it is moved aside, never
deleted, and trained afresh.

The output is written for a person: TensorFlow's, tf2onnx's and onnxruntime's INFO
lines are silenced (``histoedge -v demo`` shows everything), training shows one
progress bar per ensemble member, and the classification table shows file names.

Example::

    histoedge demo --workdir demo
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from histoedge import HistoedgeError
from histoedge.export.manifest import MANIFEST_FILE, version_folders
from histoedge.training.errors import RunConfigChanged

MODEL_NAME = "breast"
HEALTH_TIMEOUT_S = 120.0
SLIDE_SIZE = ("4096", "3072")
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)\s*$")
# Keras' one line per epoch, learning-rate notes, and native libraries' start-up chatter
_NOISE = re.compile(r"^(\d+/\d+ - |Epoch \d+: |I0000 |W0000 |WARNING: All log messages|To enable the "
                    r"following instructions|.*oneDNN custom operations)")
_verbose = False


def _env() -> dict[str, str]:
    if _verbose:
        return dict(os.environ)
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "HISTOEDGE_LOG_LEVEL": "WARNING",
            "ORT_LOGGING_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def _command(args: tuple[str, ...], *, verbose: bool | None = None) -> list[str]:
    """The child command for ``histoedge ARGS``, run by this interpreter.

    ``-P`` keeps the working directory off ``sys.path``: run from inside another checkout, its
    ``histoedge/`` folder would otherwise shadow the installed package in every child.
    """
    verbose = _verbose if verbose is None else verbose
    return [sys.executable, "-P", "-m", "histoedge", *(["-v"] if verbose else []), *args]


def _histoedge(*args: str, capture: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    print("$ histoedge " + " ".join(args), flush=True)
    result = subprocess.run(_command(args), text=True, capture_output=capture, env=_env(), cwd=cwd)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise HistoedgeError(f"'histoedge {args[0]}' failed with exit code {result.returncode}"
                             + (f": {detail[0]}" if detail else ""))
    return result


class _StepProgress:
    """Progress bars from a child's output: one bar per ``Epoch i/n`` run, else elapsed time."""

    def __init__(self, title: str) -> None:
        from tqdm import tqdm

        self._tqdm, self.title, self.bar, self.runs = tqdm, title, None, 0

    def line(self, text: str) -> bool:
        """Consume a line of output; True if it was progress (not to be printed)."""
        match = _EPOCH.match(text)
        if match:
            epoch, total = int(match.group(1)), int(match.group(2))
            if epoch == 1 or self.bar is None:
                self.close()
                self.runs += 1
                self.bar = self._tqdm(total=total, desc=f"{self.title} {self.runs}", unit="epoch",
                                      file=sys.stdout, leave=True, dynamic_ncols=True)
            self.bar.n = epoch - 1
            self.bar.refresh()
            return True
        return bool(_NOISE.match(text))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total  # early stopping ends a member before its last epoch
            self.bar.refresh()
            self.bar.close()
            self.bar = None


def _histoedge_with_progress(title: str, *args: str) -> None:
    """Run a long step with progress bars; print its other output; show everything on failure."""
    print("$ histoedge " + " ".join(args), flush=True)
    if _verbose:
        returncode, hidden = subprocess.run(_command(args), env=_env()).returncode, []
    else:
        returncode, hidden = _run_with_progress(title, args)
    if returncode == RunConfigChanged.exit_status:
        raise _Superseded(f"'histoedge {args[0]}' refused to resume a run made with other settings")
    if returncode != 0:  # what was hidden may explain the failure
        print("\n".join(hidden[-20:]), file=sys.stderr)
        raise HistoedgeError(f"'histoedge {args[0]}' failed with exit code {returncode}")


def _run_with_progress(title: str, args: tuple[str, ...]) -> tuple[int, list[str]]:
    """Run a child with progress bars; returns its exit code and the lines the bars replaced."""
    progress, hidden = _StepProgress(title), []
    with subprocess.Popen(_command(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=_env(), bufsize=1) as child:
        for text in child.stdout:
            text = text.rstrip("\n")
            if progress.line(text):
                hidden.append(text)
            elif text.strip():
                if progress.bar is not None:
                    progress.bar.write(text)
                else:
                    print(text, flush=True)
        progress.close()
    return child.returncode, hidden


class _Superseded(HistoedgeError):
    """Training refused to resume a run made with another configuration."""


def _train(data: Path, run: Path, repo: Path, image_size: int) -> None:
    """Train, or resume; a run from an older version's defaults is moved aside with its exports."""
    args = ("train", "--ensemble", "--data", str(data), "--out", str(run), "--image-size", str(image_size),
            "--quiet")
    try:
        _histoedge_with_progress("training member", *args)
        return
    except _Superseded:
        aside = run.parent / time.strftime("superseded-%Y%m%dT%H%M%SZ", time.gmtime())
        aside.mkdir()
        for folder in (run, repo):
            if folder.exists():
                folder.rename(aside / folder.name)
        print(f"{run} was trained with other settings (an older histoedge); moved it and its "
              f"exports to {aside} and training afresh", flush=True)
    _histoedge_with_progress("training member", *args)


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


def _copy_short(images: list[str], folder: Path) -> list[str]:
    """Copy the chosen images into ``folder`` so the table shows file names, not dataset paths."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    short = []
    for image in images:
        target = folder / Path(image).name
        shutil.copy2(image, target)
        short.append(str(target.relative_to(folder.parent)))
    return short


def _wait_healthy(server: subprocess.Popen, address: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise HistoedgeError(f"the server exited early with code {server.returncode}")
        probe = subprocess.run(_command(("health", "--server", address), verbose=False),
                               capture_output=True, text=True, env=_env())
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
    global _verbose
    _verbose = bool(getattr(args, "verbose", False))
    workdir = Path(args.workdir).resolve()
    data, run, repo = workdir / "data", workdir / "run", workdir / "models"
    slide = workdir / "slides" / "synthetic.tiff"
    started = time.monotonic()

    if not (data / "BreaKHis_v1").exists():
        _histoedge("data", "synth", "--out", str(data), "--n", str(args.n),
                   "--size", str(max(args.image_size, 64)))
    _train(data, run, repo, args.image_size)
    version_dir = _existing_export(repo, run, args.precision)
    if version_dir is None:
        _histoedge_with_progress("export", "export", "--run", str(run), "--repo", str(repo),
                                 "--name", MODEL_NAME, "--precision", args.precision)
        version_dir = _existing_export(repo, run, args.precision)
        if version_dir is None:
            raise HistoedgeError(f"export finished but no {args.precision} version of "
                                 f"{MODEL_NAME} from {run} is in {repo}")

    if not slide.exists():
        _histoedge("data", "synth-slide", "--out", str(slide), "--width", SLIDE_SIZE[0],
                   "--height", SLIDE_SIZE[1], "--seed", "1")

    port, metrics_port, http_port = _free_port(), _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        _command(("serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(port),
                  "--metrics-port", str(metrics_port), "--http-port", str(http_port)), verbose=False),
        env={**_env(), "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(server, address)
        images = _copy_short(_held_out_images(run, args.classify), workdir / "held-out")
        print(f"\nStatus page (while the demo runs): http://127.0.0.1:{http_port}/")
        print(f"Classifying {len(images)} held-out test images over gRPC at {address} "
              "(file names say the truth: SOB_B benign, SOB_M malignant):")
        _histoedge("classify", "--server", address, "--model", MODEL_NAME, *images, cwd=workdir)
        _print_metrics(run, version_dir)
        if json.loads((version_dir / "manifest.json").read_text()).get("field_of_view") is None:
            print(f"\n{version_dir} records no field of view (its dataset predates that); "
                  "skipping the whole-slide step: run the demo in a fresh --workdir")
            return _stop(server, started)
        print(f"\nPredicting a synthetic whole slide ({SLIDE_SIZE[0]} x {SLIDE_SIZE[1]} px, ground truth in "
              f"{slide.with_name(slide.stem + '.mask.png').name}) over gRPC:")
        _histoedge("slide", "predict", str(slide), "--out", str(workdir / "predictions"),
                   "--server", address, "--model-name", MODEL_NAME)
        print(f"Heatmap: {workdir / 'predictions' / slide.stem / 'heatmap.png'}")
    finally:
        _stop(server, started)
    return 0 if server.returncode == 0 else 1


def _stop(server: subprocess.Popen, started: float) -> int:
    if server.returncode is not None:
        return 0 if server.returncode == 0 else 1
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s; server exited with "
          f"code {server.returncode}.")
    return 0 if server.returncode == 0 else 1
