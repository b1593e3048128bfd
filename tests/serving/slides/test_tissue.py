"""Tissue detection: Otsu on saturation, without pen ink, black borders or specks."""

from __future__ import annotations

import numpy as np
import openslide

from histoedge.serving.slides.tissue import detect_tissue, tile_fractions
from histoedge.training.data.synth_slide import BENIGN, BORDER, MALIGNANT, PEN


def test_tissue_matches_the_ground_truth_and_excludes_pen_and_border(slide, truth):
    labels, _ = truth
    with openslide.OpenSlide(str(slide)) as handle:
        thumbnail = np.asarray(handle.get_thumbnail(labels.shape[::-1]).convert("RGB"))
    assert thumbnail.shape[:2] == labels.shape
    mask = detect_tissue(thumbnail)
    expected = (labels == BENIGN) | (labels == MALIGNANT)
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou >= 0.8, iou
    assert mask[labels == PEN].mean() == 0.0
    assert mask[labels == BORDER].mean() == 0.0


def test_glass_noise_and_dark_pixels_are_not_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(238, 3, (64, 96, 3)), 0, 255).astype(np.uint8)
    assert not detect_tissue(glass).any()
    glass[:, :10] = 5  # a black border next to glass
    assert not detect_tissue(glass).any()


def test_a_stained_region_is_found_and_a_speck_dropped():
    image = np.full((80, 80, 3), 240, np.uint8)
    image[20:50, 20:60] = (200, 120, 170)  # pink/purple tissue
    image[70:72, 5:7] = (200, 120, 170)  # a 2x2 speck of dust
    image[5:9, 40:75] = (60, 100, 200)  # blue ink
    mask = detect_tissue(image)
    assert mask[22:48, 22:58].all()
    assert not mask[65:, :10].any() and not mask[:12, 35:].any()


def test_tile_fractions_match_a_direct_count():
    rng = np.random.default_rng(1)
    mask = rng.random((50, 70)) < 0.4
    boxes = np.array([[0, 0, 80, 80], [160, 40, 160, 240], [1040, 752, 80, 48], [312, 120, 8, 8]])
    got = tile_fractions(mask, boxes, downsample=16.0)
    want = [mask[0:5, 0:5].mean(), mask[2:18, 10:20].mean(), mask[47:50, 65:70].mean(), mask[8:9, 20:21].mean()]
    np.testing.assert_allclose(got, want)


def test_strip_thumbnail_matches_openslide(slide, monkeypatch):
    import cv2

    from histoedge.serving.slides import reader

    monkeypatch.setattr(reader, "_STRIP_PIXELS", 256 * 10)  # many strips
    with openslide.OpenSlide(str(slide)) as handle:
        ours = reader.thumbnail(handle, (128, 96))
        level = np.asarray(handle.read_region((0, 0), 1, handle.level_dimensions[1]).convert("RGB"))
    whole = cv2.resize(level, (128, 96), interpolation=cv2.INTER_AREA)
    assert ours.shape == (96, 128, 3)
    assert np.abs(ours.astype(int) - whole).mean() < 3
