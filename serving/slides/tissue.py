"""Tissue detection on a low-resolution image of the slide.

The standard recipe (as in HistoQC, PathML and Slideflow): tissue is stained, so it is
*saturated*, while glass is white-grey.  Otsu's threshold on the HSV saturation
separates the two without a tuned constant.  Three things are saturated or dark but
are not tissue, and are removed before and after the threshold:

* blue and green pen ink (hue 70-248 degrees; haematoxylin and eosin lie mostly between
  purple and pink, 250-360 and 0-20 degrees, once nuclei are averaged over a thumbnail
  pixel): green always, blue only as strongly saturated strokes, each widened by a few
  pixels to catch the ink's soft edge;
* black: scanner borders, black ink, dust (value under ``dark``);
* specks smaller than ``min_area_pixels``, and pinholes (morphological opening and closing).

Example::

    mask = detect_tissue(thumbnail_rgb)          # bool [h, w]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoedge.imaging import rgb_to_hsv
from histoedge.serving.slides.morphology import CROSS, closing, component_areas, dilate_box, opening, otsu_threshold

# OpenCV hue is degrees / 2
_PEN_HUE = (35, 124)
_BLUE_FROM = 90


@dataclass(frozen=True)
class TissueSettings:
    """Knobs of :func:`detect_tissue` (the defaults suit H&E).

    Args:
        min_saturation: lower bound of the Otsu threshold (0-255), so a slide that is
            all glass does not have its noise called tissue.
        dark: pixels darker than this value (0-255) are never tissue.
        pen_saturation: ink-coloured pixels more saturated than this may be pen.
        pen_core_saturation: blue strokes are at least this saturated (haematoxylin is not).
        min_area_pixels: connected regions smaller than this (mask pixels) are dropped.
    """

    min_saturation: int = 20
    dark: int = 50
    pen_saturation: int = 40
    pen_core_saturation: int = 110
    min_area_pixels: int = 16


def detect_tissue(rgb: np.ndarray, settings: TissueSettings = TissueSettings()) -> np.ndarray:
    """Boolean tissue mask of a uint8 RGB image [h, w, 3] (a slide thumbnail)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [h, w, 3], got {rgb.dtype} {rgb.shape}")
    hsv = rgb_to_hsv(rgb)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    dark = value < settings.dark
    pen = _pen(hue, saturation, settings)
    candidates = saturation[~dark & ~pen]
    if candidates.size == 0:
        return np.zeros(rgb.shape[:2], bool)
    threshold = max(float(otsu_threshold(candidates)), float(settings.min_saturation))
    mask = (saturation > threshold) & ~dark & ~pen
    mask = opening(closing(mask, CROSS), CROSS)
    return mask & (component_areas(mask) >= settings.min_area_pixels)


def _pen(hue: np.ndarray, saturation: np.ndarray, settings: TissueSettings) -> np.ndarray:
    """Blue and green ink, with its soft edge.

    Green (hue 70-180 degrees) is never H&E.  Blue overlaps the bluest haematoxylin a
    little (thumbnail pixels of dense nuclei reach 235-248 degrees), so blue counts as ink
    only in strokes: strongly saturated regions of at least ``min_area_pixels``; their
    ink-hued neighbours are the stroke's soft edge.
    """
    inked = (hue >= _PEN_HUE[0]) & (hue <= _PEN_HUE[1]) & (saturation > settings.pen_saturation)
    green = inked & (hue < _BLUE_FROM)
    strong = inked & (saturation > settings.pen_core_saturation)
    core = (strong & (component_areas(strong) >= settings.min_area_pixels)) | green
    edge = dilate_box(core, 5)
    return core | (edge & (hue >= _PEN_HUE[0]) & (hue <= _PEN_HUE[1] + 4))


def tile_fractions(mask: np.ndarray, boxes: np.ndarray, downsample: float) -> np.ndarray:
    """Fraction of tissue under each level-0 box (x, y, w, h) from a mask at ``downsample``.

    Uses a summed-area table, so it costs O(1) per box whatever the tile size.
    """
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1))
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    x0 = np.clip(np.round(boxes[:, 0] / downsample), 0, width).astype(int)
    y0 = np.clip(np.round(boxes[:, 1] / downsample), 0, height).astype(int)
    x1 = np.clip(np.round((boxes[:, 0] + boxes[:, 2]) / downsample), 0, width).astype(int)
    y1 = np.clip(np.round((boxes[:, 1] + boxes[:, 3]) / downsample), 0, height).astype(int)
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=width), np.maximum(y1, y0 + 1).clip(max=height)
    area = (x1 - x0) * (y1 - y0)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)
