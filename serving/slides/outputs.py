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

from histoedge.imaging import area_resize

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


# Turbo (Anton Mikhailov, Google LLC 2019, Apache-2.0): the 256 sRGB colours of the published
# table, level 0 (dark blue) to 255 (dark red), as hex R, G, B bytes.
_TURBO_HEX = (
    "30123b32154333184a341b51351e5836215f37246638276d392a733a2d793b2f803c32863d358b3e38913f3b973f3e9c"
    "4040a24143a74146ac4249b1424bb5434eba4451bf4454c34456c74559cb455ccf455ed34661d64664da4666dd4669e0"
    "466be3476ee64771e94773eb4776ee4778f0477bf2467df44680f64682f84685fa4687fb458afc458cfd448ffe4391fe"
    "4294ff4196ff4099ff3e9bfe3d9efe3ba0fd3aa3fc38a5fb37a8fa35abf833adf731aff52fb2f42eb4f22cb7f02ab9ee"
    "28bceb27bee925c0e723c3e422c5e220c7df1fc9dd1ecbda1ccdd81bd0d51ad2d21ad4d019d5cd18d7ca18d9c818dbc5"
    "18ddc218dec018e0bd19e2bb19e3b91ae4b61ce6b41de7b21fe9af20eaac22ebaa25eca727eea42aefa12cf09e2ff19b"
    "32f29835f39438f4913cf58e3ff68a43f78746f8844af8804ef97d52fa7a55fa7659fb735dfc6f61fc6c65fd6969fd66"
    "6dfe6271fe5f75fe5c79fe597dff5680ff5384ff5188ff4e8bff4b8fff4992ff4796fe4499fe429cfe409ffd3fa1fd3d"
    "a4fc3ca7fc3aa9fb39acfb38affa37b1f936b4f836b7f735b9f635bcf534bef434c1f334c3f134c6f034c8ef34cbed34"
    "cdec34d0ea34d2e935d4e735d7e535d9e436dbe236dde037dfdf37e1dd37e3db38e5d938e7d739e9d539ebd339ecd13a"
    "eecf3aefcd3af1cb3af2c93af4c73af5c53af6c33af7c13af8be39f9bc39faba39fbb838fbb637fcb336fcb136fdae35"
    "fdac34fea933fea732fea431fea130fe9e2ffe9b2dfe992cfe962bfe932afe9029fd8d27fd8a26fc8725fc8423fb8122"
    "fb7e21fa7b1ff9781ef9751df8721cf76f1af66c19f56918f46617f36315f26014f15d13f05b12ef5811ed5510ec530f"
    "eb500eea4e0de84b0ce7490ce5470be4450ae2430ae14109df3f08dd3d08dc3b07da3907d83706d63506d43305d23105"
    "d02f05ce2d04cc2b04ca2a04c82803c52603c32503c12302be2102bc2002b91e02b71d02b41b01b21a01af1801ac1701"
    "a91601a71401a41301a112019e10019b0f01980e01950d01920b018e0a018b09028808028507028106027e05027a0403"
)


def turbo_table() -> np.ndarray:
    """uint8 RGB [256, 3]: the turbo colour of each level 0..255."""
    return np.frombuffer(bytes.fromhex(_TURBO_HEX), np.uint8).reshape(256, 3).copy()


_TURBO = turbo_table()


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)     # Pillow's bundled font: no system fonts needed


def _fit(draw, text: str, width: int, font) -> str:
    while len(text) > 4 and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..."
    return text


def _scaled(thumbnail: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    size = (max(1, round(thumbnail.shape[0] * scale)), max(1, round(thumbnail.shape[1] * scale)))
    if scale < 1:
        return area_resize(thumbnail, size)
    return np.asarray(Image.fromarray(thumbnail).resize(size[::-1], Image.Resampling.BILINEAR))


def render_heatmap(thumbnail: np.ndarray, downsample: float, boxes: np.ndarray, positive: np.ndarray,
                   title: str, subtitle: str, label: str, threshold: float | None) -> np.ndarray:
    """The heatmap picture as uint8 RGB: thumbnail + probabilities + colour bar + titles.

    Args:
        thumbnail: RGB image of the whole slide at ``downsample``.
        boxes: level-0 (x, y, w, h) of the scored tiles; ``positive`` their P(positive).
        title: the slide's name; ``subtitle``: score and model; ``label``: the colour bar's name.
    """
    from PIL import Image, ImageDraw

    scale = max(1.0, 900.0 / max(thumbnail.shape[:2]))  # small slides are enlarged to be readable
    scale = min(scale, 1400.0 / max(thumbnail.shape[:2])) if max(thumbnail.shape[:2]) > 1400 else scale
    image = _scaled(np.ascontiguousarray(thumbnail), scale)
    factor = scale / downsample
    colour = np.zeros_like(image)
    alpha = np.zeros(image.shape[:2], np.float32)
    for box, p in zip(boxes, positive):
        x0, y0 = int(round(box[0] * factor)), int(round(box[1] * factor))
        x1, y1 = int(round((box[0] + box[2]) * factor)), int(round((box[1] + box[3]) * factor))
        colour[y0:y1, x0:x1] = _TURBO[int(round(float(np.clip(p, 0, 1)) * 255))]
        alpha[y0:y1, x0:x1] = 0.45
    weight = alpha[..., None]
    image = (image * (1 - weight) + colour * weight).astype(np.uint8)  # float32 throughout

    height, width = image.shape[:2]
    top, bar_area, margin = 84, 190, 16
    canvas = np.full((height + top + margin, width + bar_area + 2 * margin, 3), 255, np.uint8)
    canvas[top:top + height, margin:margin + width] = image
    # colour bar: 1 at the top, 0 at the bottom
    bar_x, bar_w = margin + width + 28, 24
    bar_top, bar_h = top + 24, max(120, min(height - 48, 360))
    ramp = _TURBO[np.linspace(255, 0, bar_h).round().astype(int)]
    canvas[bar_top:bar_top + bar_h, bar_x:bar_x + bar_w] = ramp[:, None, :]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink, grey, rule = (20, 20, 20), (70, 70, 70), (60, 60, 60)
    title_font, subtitle_font, small = _font(26), _font(16), _font(13)
    draw.text((margin, 34), _fit(draw, title, width + bar_area, title_font), fill=ink, font=title_font,
              anchor="ls")
    draw.text((margin, 64), _fit(draw, subtitle, width + bar_area, subtitle_font), fill=grey,
              font=subtitle_font, anchor="ls")
    draw.rectangle((bar_x - 1, bar_top - 1, bar_x + bar_w, bar_top + bar_h), outline=rule, width=1)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = int(round(bar_top + (1 - value) * (bar_h - 1)))
        draw.line((bar_x + bar_w, y, bar_x + bar_w + 5, y), fill=rule, width=1)
        draw.text((bar_x + bar_w + 8, y + 5), f"{value:.2f}", fill=ink, font=small, anchor="ls")
    if threshold is not None and 0 <= threshold <= 1:
        y = int(round(bar_top + (1 - threshold) * (bar_h - 1)))
        draw.line((bar_x - 6, y, bar_x + bar_w + 4, y), fill=(0, 0, 0), width=2)
        draw.text((bar_x + bar_w + 50, y + 5), "< cut-off", fill=(0, 0, 0), font=small, anchor="ls")
    label_font = _font(15)
    draw.text((bar_x - 12, bar_top - 10), _fit(draw, label, bar_area, label_font), fill=ink,
              font=label_font, anchor="ls")
    return np.asarray(picture)


def write_heatmap(path: Path, picture: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG", compress_level=3)
    _atomic_write(path, buffer.getvalue())
