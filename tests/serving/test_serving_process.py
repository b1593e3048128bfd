"""`histoedge serve` as a real process: SIGTERM drain, environment settings, no TensorFlow, CLIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest

from histoedge.serving.client import InferenceClient
from histoedge.serving.settings import ServerSettings
from tests.serving.helpers import MODEL, encode, free_port, http, multipart, sample_images, wait_until

# The installed console script (``python -m histoedge`` would load a second copy of the
# module as __main__, whose HistoedgeError class differs from the one the stages raise).
HISTOEDGE = [str(Path(sys.executable).parent / "histoedge")]
REPO_ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int, name: str, labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def healthy(address: str) -> bool:
    try:
        with InferenceClient(address, timeout=1) as client:
            return client.health() == "SERVING"
    except grpc.RpcError:
        return False


def test_sigterm_drains_in_flight_requests(repo, tmp_path):
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    env = dict(os.environ, HISTOEDGE_MAX_QUEUE_DELAY_MS="4000", HISTOEDGE_BATCH_WAIT="full",
               HISTOEDGE_PORT="1",  # the --port flag wins over the environment
               HISTOEDGE_HTTP_PORT=str(http_port))
    log_file = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen(
        HISTOEDGE + ["serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(port),
                     "--metrics-port", str(metrics_port), "--max-batch-size", "64", "--threads", "1",
                     "--grace-seconds", "20"],
        cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(address), timeout=60)
        results: list = []

        def classify(seed: int) -> None:
            with InferenceClient(address) as client:
                try:
                    results.append(client.classify_arrays(sample_images(2, seed=seed), MODEL))
                except grpc.RpcError as error:
                    results.append(error)

        def classify_over_rest() -> None:
            status, _, body = http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/classify", "POST",
                                   *multipart({"tile.png": encode(sample_images(1)[0])}), timeout=30)
            results.append(json.loads(body)["results"] if status == 200 else (status, body))

        threads = [threading.Thread(target=classify, args=(seed,)) for seed in range(4)]
        threads.append(threading.Thread(target=classify_over_rest))
        for thread in threads:
            thread.start()
        # A full 4 s batching delay (from the environment) holds all five in the queue.
        wait_until(lambda: scrape(metrics_port, "histoedge_queue_depth", 'model="tiny"') == 5)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log_file.close()
    log = (tmp_path / "serve.log").read_text()
    assert sorted(len(r) for r in results if isinstance(r, list)) == [1, 2, 2, 2, 2], results
    with pytest.raises(OSError):  # the HTTP server went down with the process
        http(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=2)
    assert "loaded model tiny version 1" in log and "server stopped" in log


SERVE_AND_CHECK = """
import os, signal, sys, threading, time
import histoedge.cli
from histoedge.serving.client import InferenceClient

def check():
    for _ in range(600):
        try:
            with InferenceClient(sys.argv[2], timeout=1) as client:
                if client.health() == "SERVING":
                    break
        except Exception:
            pass
        time.sleep(0.05)
    banned = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
    print("BANNED", banned, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=check, daemon=True).start()
sys.exit(histoedge.cli.main(["serve", "--repo", sys.argv[1], "--port", sys.argv[2].split(":")[1],
                         "--host", "127.0.0.1", "--metrics-port", "0", "--http-port", "0"]))
"""


def test_serve_never_imports_tensorflow(repo):
    port = free_port()
    done = subprocess.run([sys.executable, "-c", SERVE_AND_CHECK, str(repo), f"127.0.0.1:{port}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BANNED []" in done.stdout
    imports = subprocess.run(
        [sys.executable, "-c", "import sys, histoedge.serving.server, histoedge.serving.client, histoedge.serving.cli, histoedge.cli;"
         "histoedge.cli.build_parser();"
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')))"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert imports.stdout.strip() == "[]", imports.stderr


def test_settings_flags_win_over_environment(tmp_path):
    env = {"HISTOEDGE_PORT": "9100", "HISTOEDGE_MAX_BATCH_SIZE": "4", "HISTOEDGE_NO_BATCHING": "yes",
           "HISTOEDGE_REPO": str(tmp_path)}
    settings = ServerSettings.from_sources({"port": 9200, "max_batch_size": None}, env)
    assert settings.port == 9200 and settings.max_batch_size == 4 and settings.no_batching
    assert settings.batch_limit == 1 and settings.repo == tmp_path
    assert ServerSettings.from_sources({}, {}).port == 8001
    with pytest.raises(Exception, match="HISTOEDGE_PORT"):
        ServerSettings.from_sources({}, {"HISTOEDGE_PORT": "eighty"})
    with pytest.raises(Exception, match="--device"):
        ServerSettings.from_sources({"device": "tpu"}, {})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(HISTOEDGE + list(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_classify_and_health_commands(address, tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for index, image in enumerate(sample_images(3, seed=30)):
        (folder / f"tile{index}.png").write_bytes(encode(image))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = tmp_path / "missing.jpg"
    table = run_cli("classify", "--server", address, "--model", MODEL, str(folder), str(missing))
    assert table.returncode == 1  # two files could not be classified
    assert "tile0.png" in table.stdout and "tile2.png" in table.stdout
    assert "ERROR" in table.stdout and "cannot read file" in table.stdout
    assert "2 of 5 images could not be classified" in table.stderr
    as_json = run_cli("classify", "--server", address, "--json", "--batch-size", "2", str(folder / "tile1.png"))
    record = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and record["label"] in ("benign", "malignant")
    assert abs(record["probability"] - record["probabilities"][1]) < 1e-9
    health = run_cli("health", "--server", address)
    assert health.returncode == 0 and "SERVING" in health.stdout
    down = run_cli("health", "--server", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert down.returncode != 0 and down.stderr.count("\n") == 1


def test_classify_unknown_model_is_one_line(address, tmp_path):
    tile = tmp_path / "tile.png"
    tile.write_bytes(encode(sample_images(1)[0]))
    done = run_cli("classify", "--server", address, "--model", "absent", str(tile))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "NOT_FOUND: unknown model 'absent'" in done.stderr
