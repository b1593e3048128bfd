"""`histoedge serve` answers a real ``curl -F`` upload on its HTTP port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.serving.helpers import (MODEL, decode_like_server, encode, free_port, http, labels_for, sample_images,
                                   wait_until)

HISTOEDGE = [str(Path(sys.executable).parent / "histoedge")]


def ready(port: int) -> bool:
    try:
        return http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)[0] == 200
    except OSError:
        return False


def curl(*args: str) -> tuple[int, dict]:
    done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", "--write-out", "\n%{http_code}",
                           *args], capture_output=True, text=True, timeout=60, check=True)
    body, code = done.stdout.rsplit("\n", 1)
    return int(code), json.loads(body)


def test_curl_form_upload(repo, tmp_path):
    images = sample_images(2, seed=5, size=48)
    for index, image in enumerate(images):
        (tmp_path / f"tile {index}.png").write_bytes(encode(image))
    (tmp_path / "notes.txt").write_text("not an image")
    http_port = free_port()
    env = dict(os.environ, HISTOEDGE_HTTP_PORT=str(http_port))  # the port from the environment
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen(
            HISTOEDGE + ["serve", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(free_port()),
                         "--metrics-port", "0", "--threads", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: ready(http_port), timeout=60)
        url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/classify"
        code, body = curl("-F", f"image=@{tmp_path / 'tile 0.png'}", "-F", f"image=@{tmp_path / 'tile 1.png'}", url)
        assert code == 200, body
        resized = np.stack([decode_like_server(encode(image)) for image in images])
        assert [(r["file"], r["label"]) for r in body["results"]] == list(
            zip(["tile 0.png", "tile 1.png"], labels_for(repo / MODEL / "1", resized)))
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in body["results"])
        code, body = curl("-F", f"image=@{tmp_path / 'notes.txt'}", url)
        assert code == 400 and body["error"].startswith("file 'notes.txt': not a PNG")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "for REST" in (tmp_path / "serve.log").read_text()
