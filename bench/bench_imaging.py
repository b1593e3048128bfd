"""Pixels without OpenCV: histoedge.imaging (Pillow + numpy) against the OpenCV calls it replaced.

For each step the serve image runs (decode and area resize of a request, monitoring
features of a batch, tissue detection of a thumbnail) this times the OpenCV version and
ours side by side (interleaved rounds, best of each) and checks that both give the same
pixels.  Training's decoder is the request decoder, so the first rows are its cost too.

Run::

    python -m bench.bench_imaging            # about a minute
    python -m bench.bench_imaging --quick
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
from PIL import Image

from bench.common import machine_info, md_table, write_results
from histoedge.imaging import decode_resized
from histoedge.serving.monitoring.features import image_features
from histoedge.serving.slides.tissue import detect_tissue
from tests.serving.monitoring.test_features_opencv import _opencv_features
from tests.serving.slides.test_morphology import _opencv_tissue


def _opencv_decode(data: bytes, size: tuple[int, int]) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image.shape[:2] != size:
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _tissue_like(rng, height: int, width: int) -> np.ndarray:
    base = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    smooth = cv2.resize(cv2.GaussianBlur(base, (0, 0), 2), (width, height), interpolation=cv2.INTER_CUBIC)
    return smooth


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return buffer.getvalue()


def _best(function, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, repeat = (3, 2) if args.quick else (9, 10)
    rng = np.random.default_rng(0)
    cases = []
    for label, (height, width), fmt, size in (
            ("PNG 64 px request, no resize", (64, 64), "PNG", (64, 64)),
            ("PNG 256 px to 64 px", (256, 256), "PNG", (64, 64)),
            ("JPEG 224 px, no resize", (224, 224), "JPEG", (224, 224)),
            ("JPEG 1000 x 700 to 224 px", (700, 1000), "JPEG", (224, 224))):
        data = _encode(_tissue_like(rng, height, width), fmt)
        ours = lambda data=data, size=size: [decode_resized(data, size) for _ in range(repeat)]  # noqa: E731
        theirs = lambda data=data, size=size: [_opencv_decode(data, size) for _ in range(repeat)]  # noqa: E731
        same = np.array_equal(decode_resized(data, size), _opencv_decode(data, size))
        cases.append((label, ours, theirs, repeat, same))
    for side in (64, 224):
        batch = np.stack([_tissue_like(rng, side, side) for _ in range(16)])
        ours = lambda batch=batch: image_features(batch)  # noqa: E731
        theirs = lambda batch=batch: _opencv_features(batch)  # noqa: E731
        close = np.allclose(image_features(batch), _opencv_features(batch), rtol=1e-9, atol=2e-5)
        cases.append((f"features, batch of 16 at {side} px", ours, theirs, 16, close))
    thumbnail = _tissue_like(rng, 1500, 2000)
    from histoedge.serving.slides.tissue import TissueSettings
    same = np.array_equal(detect_tissue(thumbnail), _opencv_tissue(thumbnail, TissueSettings()))
    cases.append(("tissue mask of a 2000 x 1500 thumbnail", lambda: detect_tissue(thumbnail),
                  lambda: _opencv_tissue(thumbnail, TissueSettings()), 1, same))

    rows, data = [], {"machine": machine_info(), "cases": []}
    for label, ours, theirs, count, same in cases:
        best_ours = best_theirs = float("inf")
        for _ in range(rounds):                       # interleaved: load changes hit both alike
            best_theirs = min(best_theirs, _best(theirs, 1))
            best_ours = min(best_ours, _best(ours, 1))
        ms_ours, ms_theirs = best_ours / count * 1e3, best_theirs / count * 1e3
        print(f"  {label}: OpenCV {ms_theirs:.3f} ms, ours {ms_ours:.3f} ms, same result: {same}", flush=True)
        rows.append([label, ms_theirs, ms_ours, ms_ours / ms_theirs, "yes" if same else "NO"])
        data["cases"].append({"case": label, "opencv_ms": ms_theirs, "ours_ms": ms_ours, "same": bool(same)})
    body = (md_table(["step (per item)", "OpenCV ms", "ours ms", "ours / OpenCV", "same result"], rows)
            + "\n\n_Best of interleaved rounds on a shared, loaded machine; ratios are what to read. "
            "\"Same result\": identical pixels and masks; features within 2e-5._\n")
    write_results("imaging", data, "Decoding, features and tissue without OpenCV", body, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
