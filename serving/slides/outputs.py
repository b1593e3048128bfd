"""What ``histoedge slide predict`` writes for one slide, in ``DIR/<slide name>/``.

* ``tiles.csv``: one row per scored tile: level-0 x, y, width, height, tissue
  fraction, one probability column per class, label.
* ``annotations.geojson``: the tiles as closed polygons in level-0 pixels, with class
  (QuPath's ``classification``) and probability (``measurements``); QuPath imports it
  with File > Import objects, or by dragging it onto the slide.
* ``heatmap.png``: the slide thumbnail with P(positive class) over the scored tiles, a
  colour bar with the decision threshold, the slide's name and its score.
* ``summary.json``: model, slide-level score and how it was aggregated, tile counts,
  tissue area, resolution check and timings.

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TOP_FRACTION = 0.05
AGGREGATION = f"mean P(positive) of the top {TOP_FRACTION:.0%} of scored tiles (at least one tile)"
# QuPath class colours: packed RGB, as QuPath writes them
_CLASS_COLOURS = {0: [64, 160, 64], 1: [200, 0, 0]}


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def slide_score(positive: np.ndarray) -> float:
    """The slide-level score: mean of the highest ``TOP_FRACTION`` of tile probabilities."""
    if positive.size == 0:
        return float("nan")
    count = max(1, int(round(TOP_FRACTION * positive.size)))
    return float(np.sort(positive)[-count:].mean())


def write_tiles_csv(path: Path, boxes: np.ndarray, fractions: np.ndarray, probabilities: np.ndarray,
                    classes: Sequence[str], labels: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["x", "y", "width", "height", "tissue_fraction", *[f"p_{c}" for c in classes], "label"])
    for box, fraction, row, label in zip(boxes, fractions, probabilities, labels):
        writer.writerow([int(box[0]), int(box[1]), int(box[2]), int(box[3]), f"{fraction:.3f}",
                         *[f"{p:.7f}" for p in row], label])
    _atomic_write(path, buffer.getvalue().encode())


def geojson(boxes: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], labels: Sequence[str],
            positive: int) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of tiles that QuPath imports as classified tile objects."""
    features = []
    for box, row, label in zip(boxes, probabilities, labels):
        x, y, w, h = (int(v) for v in box)
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        index = list(classes).index(label)
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "tile",
                "classification": {"name": label, "color": _CLASS_COLOURS.get(index, [128, 128, 128])},
                "measurements": {f"P({classes[positive]})": round(float(row[positive]), 6)},
                "isLocked": True,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: Path, collection: dict[str, Any]) -> None:
    _atomic_write(path, json.dumps(collection, separators=(",", ":")).encode())


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    _atomic_write(path, (json.dumps(summary, indent=2) + "\n").encode())


def _text(cv2, canvas, text: str, origin, scale: float, thickness: int = 1, colour=(20, 20, 20)) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def _fit(cv2, text: str, width: int, scale: float, thickness: int) -> str:
    while len(text) > 4 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > width:
        text = text[:-4] + "..."
    return text


def render_heatmap(thumbnail: np.ndarray, downsample: float, boxes: np.ndarray, positive: np.ndarray,
                   title: str, subtitle: str, label: str, threshold: float | None) -> np.ndarray:
    """The heatmap picture as uint8 RGB: thumbnail + probabilities + colour bar + titles.

    Args:
        thumbnail: RGB image of the whole slide at ``downsample``.
        boxes: level-0 (x, y, w, h) of the scored tiles; ``positive`` their P(positive).
        title: the slide's name; ``subtitle``: score and model; ``label``: the colour bar's name.
    """
    import cv2

    scale = max(1.0, 900.0 / max(thumbnail.shape[:2]))  # small slides are enlarged to be readable
    scale = min(scale, 1400.0 / max(thumbnail.shape[:2])) if max(thumbnail.shape[:2]) > 1400 else scale
    image = cv2.resize(thumbnail, None, fx=scale, fy=scale,
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    factor = scale / downsample
    colour = np.zeros_like(image)
    alpha = np.zeros(image.shape[:2], np.float32)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO)[:, 0, ::-1]
    for box, p in zip(boxes, positive):
        x0, y0 = int(round(box[0] * factor)), int(round(box[1] * factor))
        x1, y1 = int(round((box[0] + box[2]) * factor)), int(round((box[1] + box[3]) * factor))
        colour[y0:y1, x0:x1] = lut[int(round(float(np.clip(p, 0, 1)) * 255))]
        alpha[y0:y1, x0:x1] = 0.45
    weight = alpha[..., None]
    image = (image * (1 - weight) + colour * weight).astype(np.uint8)  # float32 throughout

    height, width = image.shape[:2]
    top, bar_area, margin = 84, 190, 16
    canvas = np.full((height + top + margin, width + bar_area + 2 * margin, 3), 255, np.uint8)
    canvas[top:top + height, margin:margin + width] = image
    _text(cv2, canvas, _fit(cv2, title, width + bar_area, 0.9, 2), (margin, 34), 0.9, 2)
    _text(cv2, canvas, _fit(cv2, subtitle, width + bar_area, 0.55, 1), (margin, 64), 0.55, 1, (70, 70, 70))
    # colour bar: 1 at the top, 0 at the bottom
    bar_x, bar_w = margin + width + 28, 24
    bar_top, bar_h = top + 24, max(120, min(height - 48, 360))
    ramp = lut[np.linspace(255, 0, bar_h).round().astype(int)]
    canvas[bar_top:bar_top + bar_h, bar_x:bar_x + bar_w] = ramp[:, None, :]
    cv2.rectangle(canvas, (bar_x - 1, bar_top - 1), (bar_x + bar_w, bar_top + bar_h), (60, 60, 60), 1)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(round(bar_top + (1 - value) * (bar_h - 1)))
        cv2.line(canvas, (bar_x + bar_w, y), (bar_x + bar_w + 5, y), (60, 60, 60), 1)
        _text(cv2, canvas, f"{value:.2f}", (bar_x + bar_w + 8, y + 5), 0.45)
    if threshold is not None and 0 <= threshold <= 1:
        y = int(round(bar_top + (1 - threshold) * (bar_h - 1)))
        cv2.line(canvas, (bar_x - 6, y), (bar_x + bar_w + 4, y), (0, 0, 0), 2)
        _text(cv2, canvas, "< cut-off", (bar_x + bar_w + 50, y + 5), 0.42, 1, (0, 0, 0))
    _text(cv2, canvas, _fit(cv2, label, bar_area, 0.5, 1), (bar_x - 12, bar_top - 10), 0.5)
    return canvas


def write_heatmap(path: Path, picture: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    _atomic_write(path, encoded.tobytes())
