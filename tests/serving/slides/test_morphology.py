"""The numpy mask operations equal the OpenCV calls they replaced (exactly, on every case)."""

import cv2
import numpy as np
import pytest

from histoedge.serving.slides import tissue
from histoedge.serving.slides.morphology import (CROSS, closing, component_areas, dilate_box, opening,
                                                 otsu_threshold)


def _masks(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for trial in range(count):
        height, width = (int(v) for v in rng.integers(1, 120, 2))
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.7)
        if trial % 2:                                      # blobs, holes and specks
            mask = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5) > 0.4
        yield mask


def test_morphology_and_components_equal_opencv():
    cross = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)).astype(bool)
    assert np.array_equal(cross, CROSS)
    for mask in _masks(120, seed=1):
        u8 = mask.astype(np.uint8)
        assert np.array_equal(closing(mask, CROSS), cv2.morphologyEx(u8, cv2.MORPH_CLOSE, cross.astype(np.uint8)) > 0)
        assert np.array_equal(opening(mask, CROSS), cv2.morphologyEx(u8, cv2.MORPH_OPEN, cross.astype(np.uint8)) > 0)
        assert np.array_equal(dilate_box(mask, 5), cv2.dilate(u8, np.ones((5, 5), np.uint8)) > 0)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(u8, connectivity=8)
        expected = np.where(labels > 0, stats[labels, cv2.CC_STAT_AREA], 0)
        assert np.array_equal(component_areas(mask), expected)


def test_components_of_a_large_noisy_mask():
    # a thumbnail-sized mask with thousands of components, snakes and diagonal contacts
    rng = np.random.default_rng(2)
    mask = cv2.GaussianBlur((rng.random((600, 800)) < 0.5).astype(np.float32), (0, 0), 2) > 0.5
    mask[100, 100:700] = True                                    # one long run joins many
    mask[np.arange(200, 500), np.arange(200, 500)] = True        # a diagonal (8-connected only)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    np.testing.assert_array_equal(component_areas(mask),
                                  np.where(labels > 0, stats[labels, cv2.CC_STAT_AREA], 0))


def test_otsu_equals_opencv():
    rng = np.random.default_rng(3)
    for trial in range(150):
        values = rng.integers(0, 256, int(rng.integers(1, 3000))).astype(np.uint8)
        if trial % 3 == 0:
            values = np.clip(rng.normal(rng.uniform(20, 200), 30, values.size), 0, 255).astype(np.uint8)
        if trial % 7 == 0:
            values[:] = 17                                       # one level: no split
        expected, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert otsu_threshold(values) == int(expected)


def _opencv_tissue(rgb, settings):
    """The former OpenCV implementation of detect_tissue, as the reference."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    dark = value < settings.dark
    inked = (hue >= 35) & (hue <= 124) & (saturation > settings.pen_saturation)
    strong = (inked & (saturation > settings.pen_core_saturation)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(strong, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= settings.min_area_pixels
    core = (keep[labels] | (inked & (hue < 90))).astype(np.uint8)
    edge = cv2.dilate(core, np.ones((5, 5), np.uint8)) > 0
    pen = (core > 0) | (edge & (hue >= 35) & (hue <= 128))
    candidates = saturation[~dark & ~pen]
    if candidates.size == 0:
        return np.zeros(rgb.shape[:2], bool)
    otsu, _ = cv2.threshold(candidates.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = ((saturation > max(otsu, settings.min_saturation)) & ~dark & ~pen).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= settings.min_area_pixels
    return keep[labels]


@pytest.mark.parametrize("settings", [tissue.TissueSettings(), tissue.TissueSettings(min_area_pixels=0),
                                      tissue.TissueSettings(min_area_pixels=200, min_saturation=5)])
def test_tissue_masks_equal_the_opencv_implementation(settings):
    rng = np.random.default_rng(4)
    for trial in range(25):
        height, width = (int(v) for v in rng.integers(8, 160, 2))
        rgb = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0),
                               rng.uniform(0.5, 4))
        if trial % 3 == 0:
            rgb[: height // 2] = 240                                 # glass
        np.testing.assert_array_equal(tissue.detect_tissue(rgb, settings), _opencv_tissue(rgb, settings))


def test_tile_fractions_equal_an_opencv_integral():
    rng = np.random.default_rng(5)
    mask = rng.random((90, 120)) < 0.5
    boxes = np.stack([rng.integers(0, 480, 60), rng.integers(0, 360, 60),
                      rng.integers(1, 64, 60), rng.integers(1, 64, 60)], 1).astype(float)
    integral = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_64F)
    ours = tissue.tile_fractions(mask, boxes, 4.0)
    for box, fraction in zip(boxes, ours):
        x0, y0 = (int(np.clip(round(v / 4.0), 0, n)) for v, n in ((box[0], 120), (box[1], 90)))
        x1 = max(int(np.clip(round((box[0] + box[2]) / 4.0), 0, 120)), x0 + 1)
        y1 = max(int(np.clip(round((box[1] + box[3]) / 4.0), 0, 90)), y0 + 1)
        x1, y1 = min(x1, 120), min(y1, 90)
        area = (x1 - x0) * (y1 - y0)
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        assert fraction == (total / area if area > 0 else 0.0)
