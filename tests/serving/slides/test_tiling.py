"""Tile geometry against the pyramid levels, and the resolution check."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from histoedge.export.manifest import FieldOfView
from histoedge.serving.errors import SlideError
from histoedge.serving.slides.pipeline import read_tile
from histoedge.serving.slides.tiling import check_resolution, choose_level, plan_tiles

FOV = FieldOfView(2.0, (64, 64))  # 128 um tiles, 2 um per model pixel
LEVELS = (1.0, 4.0, 16.0)


@pytest.mark.parametrize("mpp, level, read, tile", [
    (0.25, 1, 128, 512),   # 40x scan: level 1 is 1 um/px, read 128 px and halve
    (0.5, 1, 64, 256),     # 20x scan: level 1 is exactly 2 um/px
    (0.126, 2, 63, 1016),  # 80x-ish: level 2 (2.016 um/px) is within 2% of the model's pixels
    (2.4, 0, 53, 53),      # coarser than the model (1.2x): level 0, enlarged
])
def test_level_and_sizes_follow_the_pyramid(mpp, level, read, tile):
    plan = plan_tiles((20000, 16000), LEVELS, (mpp, mpp), FOV, (64, 64))
    assert plan.level == level
    assert plan.read_size == (read, read)
    assert plan.tile_size == (tile, tile)
    assert plan.read_size[0] * plan.level_downsample == pytest.approx(plan.tile_size[0], rel=0.02)
    assert plan.tile_size[0] * mpp == pytest.approx(128, rel=0.02)  # the training field of view
    boxes = plan.boxes
    assert len(boxes) == plan.grid[0] * plan.grid[1]
    assert (boxes[:, 0] + boxes[:, 2]).max() <= 20000 and (boxes[:, 1] + boxes[:, 3]).max() <= 16000
    assert boxes[:, :2].min() == 0
    # neighbours touch without gaps or overlap (up to rounding)
    assert set(np.diff(np.unique(boxes[:, 0]))) <= {tile - 1, tile, tile + 1}


def test_choose_level_takes_the_coarsest_fine_enough_level():
    assert choose_level([1, 2, 4, 8], 0.25, 1.0) == 2
    assert choose_level([1, 2, 4, 8], 0.25, 0.9) == 1
    assert choose_level([1, 4], 3.0, 2.0) == 0


def test_resolution_check_refuses_a_too_coarse_slide_unless_forced():
    assert check_resolution(2.5, FOV, (64, 64)).passed  # 1.25x: the limit is allowed
    with pytest.raises(SlideError, match=r"1\.30x coarser.*--force"):
        check_resolution(2.6, FOV, (64, 64))
    forced = check_resolution(2.6, FOV, (64, 64), force=True)
    assert not forced.passed and forced.forced and forced.to_dict()["ratio"] == 1.3
    with pytest.raises(SlideError, match="no field of view"):
        check_resolution(0.5, None, (64, 64))
    assert check_resolution(0.5, None, (64, 64), force=True).forced


def test_a_slide_smaller_than_a_tile_is_refused():
    with pytest.raises(SlideError, match="smaller than one tile"):
        plan_tiles((200, 200), (1.0,), (0.5, 0.5), FOV, (64, 64))


def test_tiles_read_from_a_low_level_match_level_zero(slide):
    import cv2

    fov = FieldOfView(4.0, (16, 16))  # 64 um: 128 px at level 0, 32 px at level 1
    with openslide.OpenSlide(str(slide)) as handle:
        plan = plan_tiles(handle.dimensions, handle.level_downsamples, (0.5, 0.5), fov, (16, 16))
        assert plan.level == 1 and plan.read_size == (32, 32) and plan.tile_size == (128, 128)
        for box in plan.boxes[::7]:
            tile = read_tile(handle, plan, box)
            full = np.asarray(handle.read_region((int(box[0]), int(box[1])), 0, (128, 128)).convert("RGB"))
            direct = cv2.resize(full, (16, 16), interpolation=cv2.INTER_AREA)
            assert tile.shape == (16, 16, 3)
            assert np.abs(tile.astype(int) - direct).mean() < 4
