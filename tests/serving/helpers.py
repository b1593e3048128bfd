"""Helpers shared by the serving tests (fixtures are in conftest.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from histoedge.serving.client import InferenceClient
from tests.support.ports import free_port  # noqa: F401  (the serving tests import it from here)

SIZE = 16
MODEL = "tiny"


def wait_until(condition, timeout: float = 20.0, interval: float = 0.02):
    """Poll ``condition`` until it returns something true; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s: {condition}")


def reference(version_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of a direct onnxruntime run, the ground truth for the server."""
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": images})))


def sample_images(count: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Flat-coloured RGB tiles (different colours give different predictions)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(count, 1, 1, 3))
    noise = rng.integers(0, 8, size=(count, size, size, 3))
    return np.clip(colours + noise, 0, 255).astype(np.uint8)


def encode(image_rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def decode_like_server(data: bytes, size: int = SIZE) -> np.ndarray:
    image = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


class Gate:
    """A run hook that counts session runs and can hold them until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.running = threading.Event()
        self._open = threading.Event()
        if not hold:
            self._open.set()

    def release(self) -> None:
        self._open.set()

    def __call__(self, run):
        def gated(batch):
            self.running.set()
            self._open.wait(30)
            self.batch_sizes.append(len(batch))
            return run(batch)
        return gated


class Hammer:
    """Client threads that send requests in a loop until the ``with`` block ends.

    Args:
        address: ``host:port`` of the server.
        call: sends one request with the given client, checks the answer and returns the
            version that answered; whatever it raises is collected in ``failures``.
        threads: concurrent clients.
    """

    def __init__(self, address: str, call, threads: int = 3) -> None:
        self.versions: list[str] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(address, call)) for _ in range(threads)]

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, address: str, call) -> None:
        with InferenceClient(address) as client:
            while not self._stop.is_set():
                try:
                    self.versions.append(call(client))
                except BaseException as error:  # noqa: BLE001 - collected and asserted by the test
                    self.failures.append(error)


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
         timeout: float = 20.0, context=None) -> tuple[int, "http.client.HTTPMessage", bytes]:
    """One HTTP request with the standard library; (status, headers, body), errors included.

    The headers are looked up without regard to case, as HTTP says.
    """
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def http_json(url: str, payload=None, method: str | None = None, **kwargs) -> tuple[int, dict]:
    """POST ``payload`` as JSON (GET without one); (status, decoded JSON body)."""
    import json

    body = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    status, _, data = http(url, method or ("POST" if body is not None else "GET"), body, headers, **kwargs)
    return status, json.loads(data)


def labels_for(version_dir: Path, images: np.ndarray, threshold: float = 0.5) -> list[str]:
    """What the server should answer for ``images`` of the tiny binary test model."""
    probabilities = reference(version_dir, images)["probabilities"]
    return ["malignant" if p[1] >= threshold else "benign" for p in probabilities]


def multipart(files: dict[str, bytes], field: str = "image") -> tuple[bytes, dict]:
    """A ``multipart/form-data`` body with one file part per item, and its Content-Type header."""
    boundary = "histoedge-test-boundary"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files.items()) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
