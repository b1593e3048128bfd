"""The serve image has no OpenCV: serving, monitoring and slide prediction must not need it.

A child interpreter in which ``import cv2`` fails imports every serving module, starts the
server with a monitored model, classifies PNG and JPEG requests over gRPC and REST, and
predicts a slide; its answers must equal the pixels and model outputs computed here.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoedge.imaging import decode_resized
from histoedge.training.data.synth_slide import write_synthetic_slide
from tests.serving.helpers import MODEL, SIZE, free_port, multipart, reference, sample_images
from tests.serving.slides.conftest import add_field_of_view
from tests.support.model_packages import write_model_version

_CHILD = textwrap.dedent('''
    import sys
    sys.modules["cv2"] = None                      # `import cv2` now raises ImportError
    import importlib, json, pkgutil, urllib.request
    from pathlib import Path

    import histoedge.serving
    from histoedge.cli import main
    from prometheus_client import CollectorRegistry
    from histoedge.serving.client import InferenceClient
    from histoedge.serving.server import InferenceServer
    from histoedge.serving.settings import ServerSettings

    repo, slide, out, model, http_port, content_type = sys.argv[1:7]
    imported = []
    for module in pkgutil.walk_packages(histoedge.serving.__path__, "histoedge.serving."):
        importlib.import_module(module.name)
        imported.append(module.name)
    encoded = [Path(out, name).read_bytes() for name in ("a.png", "b.jpg", "c.png")]
    server = InferenceServer(ServerSettings(repo=Path(repo), host="127.0.0.1", port=0, metrics_port=0,
                                            http_port=int(http_port), poll_seconds=0, threads=1),
                             CollectorRegistry()).start()
    try:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            grpc = [list(p.probabilities) for p in client.classify_bytes(encoded, model)]
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/models/{model}/classify",
            data=Path(out, "upload.bin").read_bytes(), headers={"Content-Type": content_type}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            rest = json.loads(response.read())
    finally:
        server.stop(grace=1)
    code = main(["slide", "predict", slide, "--out", out, "--model", str(Path(repo, model)),
                 "--batch-size", "8", "--no-progress"])
    print(json.dumps({"imported": imported, "grpc": grpc, "rest": rest, "slide": code,
                      "cv2": "cv2" in sys.modules and sys.modules["cv2"] is not None}))
''')


def _encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-opencv")
    images = sample_images(3, seed=9, size=40)                     # resized to 16 by the server
    version = add_field_of_view(write_model_version(root / "models", MODEL, 1, size=SIZE,
                                                    profile_images=sample_images(8, seed=1)))
    slide = root / "slide.tiff"
    write_synthetic_slide(slide, width=1024, height=768, mpp=0.5, seed=4)
    out = root / "out"
    out.mkdir()
    encoded = [_encode(images[0], "PNG"), _encode(images[1], "JPEG", quality=90), _encode(images[2], "PNG")]
    for name, data in zip(("a.png", "b.jpg", "c.png"), encoded):
        (out / name).write_bytes(data)
    body, headers = multipart({"b.jpg": encoded[1]})
    (out / "upload.bin").write_bytes(body)
    return root, version, slide, out, encoded, headers["Content-Type"]


def test_serving_and_slides_work_without_opencv(setup):
    root, version, slide, out, encoded, content_type = setup
    result = subprocess.run([sys.executable, "-c", _CHILD, str(root / "models"), str(slide), str(out), MODEL,
                             str(free_port()), content_type], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["cv2"]
    assert {"histoedge.serving.images", "histoedge.serving.slides.tissue",
            "histoedge.serving.monitoring.features"} <= set(report["imported"])
    # the server's answers are the model's outputs on the shared decoder's pixels
    pixels = np.stack([decode_resized(data, (SIZE, SIZE)) for data in encoded])
    expected = reference(version, pixels)["probabilities"]
    np.testing.assert_allclose(np.array(report["grpc"]), expected, atol=1e-6)
    (rest,) = report["rest"]["results"]
    assert rest["file"] == "b.jpg"
    assert rest["probabilities"] == pytest.approx({"benign": expected[1][0], "malignant": expected[1][1]},
                                                  rel=1e-6)
    assert report["slide"] == 0
    predicted = out / "slide"
    assert {"tiles.csv", "heatmap.png", "summary.json", "annotations.geojson"} <= {p.name for p in predicted.iterdir()}
    assert Image.open(predicted / "heatmap.png").size[0] > 900
