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
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [h, w, 3], got {rgb.dtype} {rgb.shape}")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    dark = value < settings.dark
    pen = _pen(cv2, hue, saturation, settings)
    candidates = saturation[~dark & ~pen]
    if candidates.size == 0:
        return np.zeros(rgb.shape[:2], bool)
    otsu, _ = cv2.threshold(candidates.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(settings.min_saturation))
    mask = ((saturation > threshold) & ~dark & ~pen).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= settings.min_area_pixels
    return keep[labels]


def _pen(cv2, hue: np.ndarray, saturation: np.ndarray, settings: TissueSettings) -> np.ndarray:
    """Blue and green ink, with its soft edge.

    Green (hue 70-180 degrees) is never H&E.  Blue overlaps the bluest haematoxylin a
    little (thumbnail pixels of dense nuclei reach 235-248 degrees), so blue counts as ink
    only in strokes: strongly saturated regions of at least ``min_area_pixels``; their
    ink-hued neighbours are the stroke's soft edge.
    """
    inked = (hue >= _PEN_HUE[0]) & (hue <= _PEN_HUE[1]) & (saturation > settings.pen_saturation)
    green = inked & (hue < _BLUE_FROM)
    strong = (inked & (saturation > settings.pen_core_saturation)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= settings.min_area_pixels
    core = (keep[labels] | green).astype(np.uint8)
    edge = cv2.dilate(core, np.ones((5, 5), np.uint8)) > 0
    return (core > 0) | (edge & (hue >= _PEN_HUE[0]) & (hue <= _PEN_HUE[1] + 4))


def tile_fractions(mask: np.ndarray, boxes: np.ndarray, downsample: float) -> np.ndarray:
    """Fraction of tissue under each level-0 box (x, y, w, h) from a mask at ``downsample``.

    Uses a summed-area table, so it costs O(1) per box whatever the tile size.
    """
    import cv2

    integral = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    height, width = mask.shape
    x0 = np.clip(np.round(boxes[:, 0] / downsample), 0, width).astype(int)
    y0 = np.clip(np.round(boxes[:, 1] / downsample), 0, height).astype(int)
    x1 = np.clip(np.round((boxes[:, 0] + boxes[:, 2]) / downsample), 0, width).astype(int)
    y1 = np.clip(np.round((boxes[:, 1] + boxes[:, 3]) / downsample), 0, height).astype(int)
    x1, y1 = np.maximum(x1, x0 + 1).clip(max=width), np.maximum(y1, y0 + 1).clip(max=height)
    area = (x1 - x0) * (y1 - y0)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)
