"""``histoedge data synth-slide``: a pyramidal TIFF that OpenSlide opens, with its ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import openslide
import pytest

from histoedge.training.data.synth_slide import (BORDER, GLASS, MALIGNANT, MASK_DOWNSAMPLE, PEN,
                                                 make_plan, write_synthetic_slide)
from histoedge.training.errors import DataError


def test_openslide_reads_levels_pixel_size_and_content(tmp_path):
    path = tmp_path / "s.tiff"
    info = write_synthetic_slide(path, width=1024, height=768, mpp=0.5, seed=1)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.dimensions == (1024, 768)
        assert slide.level_dimensions == ((1024, 768), (256, 192))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        level0 = np.asarray(slide.read_region((0, 0), 0, (1024, 768)).convert("RGB"))
        level1 = np.asarray(slide.read_region((0, 0), 1, (256, 192)).convert("RGB"))
    labels = cv2.imread(str(tmp_path / "s.mask.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (768 // MASK_DOWNSAMPLE, 1024 // MASK_DOWNSAMPLE)
    assert json.loads((tmp_path / "s.mask.json").read_text())["fractions"] == info["fractions"]
    small = cv2.resize(level0, (64, 48), interpolation=cv2.INTER_AREA).astype(int)
    # each class looks as it should: border black, glass bright and grey, pen blue, tissue stained
    assert small[labels == BORDER].mean() < 40
    glass = small[labels == GLASS]
    assert glass.mean() > 220 and np.abs(glass[:, 0] - glass[:, 1]).mean() < 10
    pen = small[labels == PEN]
    assert (pen[:, 2] - pen[:, 0]).mean() > 60
    tissue = small[(labels >= 1) & (labels <= MALIGNANT)]
    assert tissue.size and (tissue[:, 0] - tissue[:, 1]).mean() > 20  # pink/purple: red over green
    # the pyramid level is the level-0 image made smaller
    down = cv2.resize(level0, (256, 192), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(down - level1).mean() < 3


def test_same_seed_same_slide_and_no_pixel_size_on_request(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tiff", width=512, height=512, seed=3)
    b = write_synthetic_slide(tmp_path / "b.tiff", width=512, height=512, seed=3, record_mpp=False)
    assert a["fractions"] == b["fractions"]
    with openslide.OpenSlide(str(tmp_path / "a.tiff")) as one, openslide.OpenSlide(str(tmp_path / "b.tiff")) as two:
        assert np.array_equal(np.asarray(one.read_region((0, 0), 0, (512, 512))),
                              np.asarray(two.read_region((0, 0), 0, (512, 512))))
        assert openslide.PROPERTY_NAME_MPP_X not in two.properties


def test_plan_has_every_region():
    labels = make_plan(4096, 3072, 0.5, seed=0).labels()
    for label in range(5):
        assert (labels == label).mean() > 0.005, label


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(DataError, match="at least 512"):
        write_synthetic_slide(tmp_path / "x.tiff", width=100, height=600)
    with pytest.raises(DataError, match="mpp"):
        write_synthetic_slide(tmp_path / "x.tiff", width=600, height=600, mpp=0)
