"""Tile geometry: which pyramid level to read, how big a tile is, and the resolution check.

A tile covers the same field of view as one training image (the manifest's
:class:`~histoedge.export.manifest.FieldOfView`), whatever the slide's pixel size.
The model needs pixels of ``fov.microns / input size`` microns; the tile is read from the
coarsest level that is at least that fine and resized (area interpolation) to the input
size, so a 40x scan is read from a low level instead of level 0.  A slide whose level 0
is more than ``MAX_RESOLUTION_RATIO`` times coarser than the model's pixels cannot show
what the model was trained on and is refused unless forced.

Example::

    plan = plan_tiles((80000, 60000), (1, 4, 16), (0.25, 0.25), fov, (64, 64))
    plan.level, plan.read_size, len(plan.boxes)      # 2, (64, 64), 18750
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from histoedge.export.manifest import FieldOfView
from histoedge.serving.errors import SlideError

MAX_RESOLUTION_RATIO = 1.25
_LEVEL_TOLERANCE = 1.02  # a level 2% coarser than needed is read as is (scanner rounding)


@dataclass(frozen=True)
class ResolutionCheck:
    """How the slide's pixel size compares with the model's (see :func:`check_resolution`)."""

    slide_mpp: float | None
    model_mpp: float | None
    ratio: float | None
    passed: bool
    forced: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"slide_mpp": self.slide_mpp, "model_mpp": self.model_mpp,
                "ratio": None if self.ratio is None else round(self.ratio, 4),
                "limit": MAX_RESOLUTION_RATIO, "passed": self.passed, "forced": self.forced,
                "reason": self.reason}


def check_resolution(slide_mpp: float, fov: FieldOfView | None, input_size: tuple[int, int],
                     force: bool = False) -> ResolutionCheck:
    """Refuse (:class:`SlideError`) a slide too coarse for the model, unless ``force``.

    Args:
        slide_mpp: level-0 microns per pixel (the finer axis).
        fov: the model's field of view (None: the manifest does not record it).
        input_size: (height, width) of the model's input.
        force: tile anyway, and record that the check was overridden.
    """
    if fov is None:
        reason = ("the model's manifest records no field of view (re-export it with --mpp), so tiles "
                  "cannot be matched to its training magnification")
        if not force:
            raise SlideError(reason + "; --force tiles at the model's input size on level 0")
        return ResolutionCheck(slide_mpp, None, None, False, True, reason)
    model_mpp = fov.microns[1] / input_size[1]
    ratio = slide_mpp / model_mpp
    if ratio <= MAX_RESOLUTION_RATIO:
        return ResolutionCheck(slide_mpp, model_mpp, ratio, True, False,
                               "the slide resolves the model's pixels")
    reason = (f"the slide's pixels are {slide_mpp:.3g} um but the model was trained on "
              f"{model_mpp:.3g} um pixels ({ratio:.2f}x coarser, more than {MAX_RESOLUTION_RATIO}x)")
    if not force:
        raise SlideError(reason + "; check --mpp or use --force")
    return ResolutionCheck(slide_mpp, model_mpp, ratio, False, True, reason)


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of a slide are and how to read them.

    Args:
        level: pyramid level to read.
        level_downsample: that level's downsample from level 0.
        tile_size: (width, height) of a tile at level 0, in level-0 pixels.
        read_size: (width, height) read at ``level`` (then resized to ``input_size``).
        input_size: (width, height) of the model's input.
        grid: (columns, rows) of the tile grid over the slide.
        boxes: level-0 (x, y, width, height) of every grid tile, row by row.
        check: the resolution check.
    """

    level: int
    level_downsample: float
    tile_size: tuple[int, int]
    read_size: tuple[int, int]
    input_size: tuple[int, int]
    grid: tuple[int, int]
    boxes: np.ndarray
    check: ResolutionCheck


def choose_level(downsamples: Sequence[float], slide_mpp: float, wanted_mpp: float) -> int:
    """The coarsest level whose pixels are at most ``wanted_mpp`` (level 0 if none is)."""
    best = 0
    for level, downsample in enumerate(downsamples):
        if slide_mpp * downsample <= wanted_mpp * _LEVEL_TOLERANCE:
            best = level if downsample >= downsamples[best] else best
    return best


def plan_tiles(dimensions: tuple[int, int], downsamples: Sequence[float], mpp: tuple[float, float],
               fov: FieldOfView | None, input_size: tuple[int, int], force: bool = False) -> TilePlan:
    """Plan the tiles of a slide of level-0 ``dimensions`` (width, height).

    Args:
        dimensions: level-0 (width, height).
        downsamples: downsample of each pyramid level (level 0 first, 1.0).
        mpp: level-0 (x, y) microns per pixel.
        fov: the model's field of view, or None (then only with ``force``).
        input_size: the model's input (height, width), as the manifest gives it.
        force: see :func:`check_resolution`.
    """
    height_in, width_in = input_size
    check = check_resolution(min(mpp), fov, input_size, force)
    if fov is None:
        tile_um = (width_in * mpp[0], height_in * mpp[1])
    else:
        tile_um = (fov.microns[1], fov.microns[0])
    tile_w, tile_h = tile_um[0] / mpp[0], tile_um[1] / mpp[1]  # level-0 pixels, fractional
    wanted_mpp = tile_um[0] / width_in
    level = choose_level(list(downsamples), mpp[0], wanted_mpp)
    downsample = float(downsamples[level])
    read_size = (max(1, round(tile_w / downsample)), max(1, round(tile_h / downsample)))
    width, height = dimensions
    columns, rows = math.floor(width / tile_w), math.floor(height / tile_h)
    if columns < 1 or rows < 1:
        raise SlideError(f"the slide ({width} x {height} px) is smaller than one tile "
                         f"({tile_w:.0f} x {tile_h:.0f} px at level 0)")
    xs = np.round(np.arange(columns) * tile_w).astype(np.int64)
    ys = np.round(np.arange(rows) * tile_h).astype(np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([grid_x.ravel(), grid_y.ravel(),
                      np.full(grid_x.size, round(tile_w)), np.full(grid_x.size, round(tile_h))], 1)
    return TilePlan(level=level, level_downsample=downsample, tile_size=(round(tile_w), round(tile_h)),
                    read_size=read_size, input_size=(width_in, height_in), grid=(columns, rows),
                    boxes=boxes, check=check)
