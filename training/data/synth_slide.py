"""A synthetic whole-slide image: a pyramidal tiled TIFF that OpenSlide opens, with ground truth.

The slide is one patient: smooth blobs of tissue on glass, some regions malignant and
the rest benign, rendered patch by patch with the synthetic tissue renderer
(:mod:`histoedge.training.data.synth_render`) at its 200X reference scale, so a patch of
``FIELD_MICRONS`` microns shows the same tissue as one training image.  A blue pen
mark crosses the glass above the tissue, and a black scanner border runs along
two edges.  Level 0 is rendered in bands of tiles and streamed into the TIFF, so
memory holds only the (16x smaller) next level, whatever the slide's size.

Beside ``slide.tiff`` go ``slide.mask.png`` (one label per pixel at ``downsample``:
0 glass, 1 benign tissue, 2 malignant tissue, 3 pen, 4 border) and ``slide.mask.json``
(the legend, downsample, slide size and pixel size).

Example::

    histoedge data synth-slide --out slides/synthetic.tiff --width 8192 --height 6144 --seed 1
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoedge.training.data.synth_render import FIELD_MICRONS, TileSpec, render_tile
from histoedge.training.errors import DataError

log = logging.getLogger(__name__)

GLASS, BENIGN, MALIGNANT, PEN, BORDER = 0, 1, 2, 3, 4
LABELS = {GLASS: "glass", BENIGN: "benign", MALIGNANT: "malignant", PEN: "pen", BORDER: "border"}
TILE = 256  # TIFF tile side
LEVEL_FACTOR = 4  # each pyramid level is 4x smaller than the one above, as in Aperio files
MASK_DOWNSAMPLE = 16
_GLASS_RGB = np.array([238, 236, 241], np.float32)
_PEN_OD = np.array([1.6, 0.9, 0.25], np.float32)  # blue ink: absorbs red most
_BENIGN_SUBTYPES, _MALIGNANT_SUBTYPES = ("F", "A", "TA"), ("DC", "LC")


@dataclass
class SlidePlan:
    """Everything random about a slide, at mask resolution (``MASK_DOWNSAMPLE``).

    ``tissue`` and ``malignant`` are smooth maps in [0, 1]; ``pen`` is the ink's
    opacity; ``border`` is 1 on the scanner border.
    """

    width: int
    height: int
    mpp: float
    seed: int
    tissue: np.ndarray
    malignant: np.ndarray
    pen: np.ndarray
    border: np.ndarray
    stain: np.ndarray

    @property
    def patch(self) -> int:
        """Side of one rendered patch in level-0 pixels (the training images' field of view)."""
        return max(16, int(round(FIELD_MICRONS / self.mpp)))

    def labels(self) -> np.ndarray:
        """The ground-truth label image at mask resolution."""
        labels = np.full(self.tissue.shape, GLASS, np.uint8)
        tissue = self.tissue >= 0.5
        labels[tissue] = np.where(self.malignant[tissue] >= 0.5, MALIGNANT, BENIGN)
        labels[self.pen >= 0.5] = PEN
        labels[self.border >= 0.5] = BORDER
        return labels


def _smooth_noise(cv2, rng, shape, sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return (field - field.mean()) / (field.std() + 1e-6)


def make_plan(width: int, height: int, mpp: float, seed: int) -> SlidePlan:
    """Draw tissue, malignant regions, pen mark and border for a slide of ``width`` x ``height``."""
    import cv2

    rng = np.random.default_rng(seed)
    mh, mw = -(-height // MASK_DOWNSAMPLE), -(-width // MASK_DOWNSAMPLE)
    yy, xx = np.mgrid[0:mh, 0:mw].astype(np.float32)
    yy, xx = yy / mh, xx / mw
    # two or three tissue fragments, roughly elliptical with ragged edges
    blobs = np.zeros((mh, mw), np.float32)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.75)
        ry, rx = rng.uniform(0.2, 0.3), rng.uniform(0.15, 0.22)
        blobs = np.maximum(blobs, np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)))
    scale = max(mh, mw)
    ragged = blobs + 0.12 * _smooth_noise(cv2, rng, (mh, mw), scale / 40)
    tissue = np.clip((ragged - 0.45) / 0.08 + 0.5, 0, 1)
    # malignant regions: the high part of a smooth field inside the tissue
    field = _smooth_noise(cv2, rng, (mh, mw), scale / 14)
    malignant = np.clip((field - 0.25) / 0.15 + 0.5, 0, 1)
    # a pen stroke: a wavy line across the glass, as a pathologist's note beside the tissue
    pen = np.zeros((mh, mw), np.float32)
    x0, x1 = rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95)
    t = np.linspace(0, 1, 64)
    px = (x0 + (x1 - x0) * t) * mw
    py = (rng.uniform(0.12, 0.2) + 0.05 * np.sin(2 * np.pi * (t * rng.uniform(0.8, 1.5)))) * mh
    thickness = max(2, int(round(0.012 * scale)))
    cv2.polylines(pen, [np.stack([px, py], 1).astype(np.int32)], False, 1.0, thickness, cv2.LINE_AA)
    pen = cv2.GaussianBlur(pen, (0, 0), 0.7) * 0.9
    # the black border a scanner leaves where the slide's edge or label shadow is imaged
    border = np.zeros((mh, mw), np.float32)
    border[:, : max(1, int(0.025 * mw))] = 1.0
    border[: max(1, int(0.02 * mh)), :] = 1.0
    return SlidePlan(width, height, mpp, seed, tissue, malignant, pen, border,
                     stain=rng.normal(0.0, 1.0, 6))


class _PatchCache:
    """Rendered patches of the current rows of the patch grid (grid offset by half a patch)."""

    def __init__(self, plan: SlidePlan) -> None:
        self.plan = plan
        self.size = plan.patch
        self.offset = self.size // 2
        self.rows: dict[int, dict] = {}
        rng = np.random.default_rng(plan.seed + 1)
        self.benign_subtype = _BENIGN_SUBTYPES[rng.integers(len(_BENIGN_SUBTYPES))]
        self.malignant_subtype = _MALIGNANT_SUBTYPES[rng.integers(len(_MALIGNANT_SUBTYPES))]

    def cell_stats(self, row: int, col: int) -> tuple[float, float, float]:
        """Max tissue, max and min malignancy of one grid cell, read from the plan."""
        d = MASK_DOWNSAMPLE
        y0, x0 = row * self.size - self.offset, col * self.size - self.offset
        ys = slice(max(0, y0 // d), max(0, (y0 + self.size) // d + 1))
        xs = slice(max(0, x0 // d), max(0, (x0 + self.size) // d + 1))
        tissue, malignant = self.plan.tissue[ys, xs], self.plan.malignant[ys, xs]
        if tissue.size == 0:
            return 0.0, 0.0, 0.0
        return float(tissue.max()), float(malignant.max()), float(malignant.min())

    def cell(self, row: int, col: int, malignant: bool) -> np.ndarray | None:
        """The patch of one cell as float32 RGB, rendered as benign or malignant tissue."""
        cells = self.rows.setdefault(row, {})
        key = (col, malignant)
        if key not in cells:
            rng = np.random.default_rng([self.plan.seed, row, col, int(malignant)])
            grade = rng.normal(0.70 if malignant else 0.22, 0.11)
            spec = TileSpec(grade=float(np.clip(grade, 0, 1)), magnification=200, stain=self.plan.stain,
                            subtype=self.malignant_subtype if malignant else self.benign_subtype,
                            seed=int(rng.integers(2**63 - 1)))
            cells[key] = render_tile(spec, self.size).astype(np.float32)
        return cells[key]

    def forget_above(self, row: int) -> None:
        for old in [r for r in self.rows if r < row]:
            del self.rows[old]


def _upsample(cv2, plan_map: np.ndarray, y0: int, y1: int, width: int) -> np.ndarray:
    """Rows ``y0:y1`` of a mask-resolution map at level-0 resolution (bilinear)."""
    d = MASK_DOWNSAMPLE
    m0, m1 = max(0, y0 // d - 1), min(plan_map.shape[0], -(-y1 // d) + 1)
    part = cv2.resize(plan_map[m0:m1], (plan_map.shape[1] * d, (m1 - m0) * d),
                      interpolation=cv2.INTER_LINEAR)
    # pixel centres: mask pixel i covers level-0 rows i*d .. i*d+d-1
    start = y0 - m0 * d
    return part[start:start + (y1 - y0), :width]


def render_band(plan: SlidePlan, cache: _PatchCache, y0: int, y1: int) -> np.ndarray:
    """Level-0 rows ``y0:y1`` as uint8 RGB."""
    import cv2

    width, size, offset = plan.width, cache.size, cache.offset
    tissue = _upsample(cv2, plan.tissue, y0, y1, width)[..., None]
    malignant = _upsample(cv2, plan.malignant, y0, y1, width)[..., None]
    benign_rgb = np.zeros((y1 - y0, width, 3), np.float32)
    malignant_rgb = np.zeros_like(benign_rgb)
    first_row, last_row = (y0 + offset) // size, (y1 - 1 + offset) // size
    for row in range(first_row, last_row + 1):
        cy0 = row * size - offset
        for col in range(0, (width + offset) // size + 1):
            cx0 = col * size - offset
            stats = cache.cell_stats(row, col)
            if stats[0] <= 0.01:
                continue
            ys, ye = max(y0, cy0), min(y1, cy0 + size)
            xs, xe = max(0, cx0), min(width, cx0 + size)
            if ye <= ys or xe <= xs:
                continue
            for flag, target in ((False, benign_rgb), (True, malignant_rgb)):
                if (flag and stats[1] < 0.01) or (not flag and stats[2] > 0.99):
                    continue
                patch = cache.cell(row, col, flag)
                target[ys - y0:ye - y0, xs:xe] = patch[ys - cy0:ye - cy0, xs - cx0:xe - cx0]
        cache.forget_above(first_row)
    rng = np.random.default_rng([plan.seed, 7, y0])
    shade = 1.0 + 0.015 * np.sin(np.linspace(0, 3.1, width, dtype=np.float32))[None, :, None]
    glass = _GLASS_RGB * shade + rng.normal(0, 1.5, (y1 - y0, width, 3)).astype(np.float32)
    rgb = malignant * malignant_rgb + (1 - malignant) * benign_rgb
    rgb = tissue * rgb + (1 - tissue) * glass
    pen = _upsample(cv2, plan.pen, y0, y1, width)[..., None]
    rgb *= np.exp(-pen * _PEN_OD)
    border = _upsample(cv2, plan.border, y0, y1, width)[..., None] >= 0.5
    dark = 12 + rng.normal(0, 2, rgb.shape).astype(np.float32)
    rgb = np.where(border, dark, rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while min(sizes[-1]) // LEVEL_FACTOR >= 128:
        w, h = sizes[-1]
        sizes.append((w // LEVEL_FACTOR, h // LEVEL_FACTOR))
    return sizes


def write_synthetic_slide(out: str | Path, *, width: int = 8192, height: int = 6144, mpp: float = 0.5,
                          seed: int = 0, record_mpp: bool = True) -> dict:
    """Write a pyramidal tiled TIFF slide and its ground-truth mask; return the mask's metadata.

    Args:
        out: the ``.tiff`` file to write; ``<stem>.mask.png`` and ``<stem>.mask.json`` go beside it.
        width, height: level-0 size in pixels.
        mpp: level-0 microns per pixel (0.5 is a 20x scan).
        seed: random seed; the same seed writes the same slide.
        record_mpp: write the pixel size into the TIFF (False makes a slide without one).

    Example::

        info = write_synthetic_slide("slide.tiff", width=4096, height=3072, seed=3)
    """
    import cv2
    import tifffile

    if width < 512 or height < 512:
        raise DataError(f"a synthetic slide needs at least 512 x 512 pixels, got {width} x {height}")
    if not 0.05 <= mpp <= 10:
        raise DataError(f"--mpp {mpp} is outside 0.05..10 microns per pixel")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = make_plan(width, height, mpp, seed)
    cache = _PatchCache(plan)
    sizes = _level_sizes(width, height)
    pad_w, pad_h = -(-width // TILE) * TILE, -(-height // TILE) * TILE
    factor = LEVEL_FACTOR
    level1 = np.zeros((height // factor, width // factor, 3), np.uint8) if len(sizes) > 1 else None

    def level0_tiles():
        for y0 in range(0, pad_h, TILE):
            y1 = min(height, y0 + TILE)
            band = render_band(plan, cache, y0, y1)
            if level1 is not None:
                rows = (y1 - y0) // factor
                if rows:
                    small = cv2.resize(band[: rows * factor, : (width // factor) * factor],
                                       (width // factor, rows), interpolation=cv2.INTER_AREA)
                    level1[y0 // factor:y0 // factor + rows] = small[: level1.shape[0] - y0 // factor]
            padded = np.zeros((TILE, pad_w, 3), np.uint8)
            padded[: y1 - y0, :width] = band
            for x0 in range(0, pad_w, TILE):
                yield padded[:, x0:x0 + TILE]

    options = dict(tile=(TILE, TILE), photometric="rgb", compression="zlib", compressionargs={"level": 6})
    if record_mpp:
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(out, bigtiff=True) as tif:
        tif.write(level0_tiles(), shape=(height, width, 3), dtype=np.uint8,
                  description=f"histoedge synthetic slide seed={seed}", **options)
        level = level1
        for index, (w, h) in enumerate(sizes[1:], start=1):
            if index > 1:
                level = cv2.resize(level, (w, h), interpolation=cv2.INTER_AREA)
            level_options = dict(options)
            if record_mpp:
                level_mpp = mpp * width / w
                level_options.update(resolution=(1e4 / level_mpp, 1e4 / level_mpp))
            tif.write(level[:h, :w], subfiletype=1, **level_options)
    labels = plan.labels()
    mask_path = out.with_name(out.stem + ".mask.png")
    cv2.imwrite(str(mask_path), labels)
    info = {"slide": out.name, "width": width, "height": height, "mpp": mpp if record_mpp else None,
            "downsample": MASK_DOWNSAMPLE, "labels": {str(k): v for k, v in LABELS.items()},
            "patch_microns": FIELD_MICRONS, "seed": seed,
            "fractions": {LABELS[k]: round(float((labels == k).mean()), 4) for k in LABELS}}
    out.with_name(out.stem + ".mask.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def cli_synth_slide(args) -> int:
    """Handler of ``histoedge data synth-slide``."""
    info = write_synthetic_slide(args.out, width=args.width, height=args.height, mpp=args.mpp,
                                 seed=args.seed)
    stem = Path(args.out)
    print(f"wrote {args.out} ({args.width} x {args.height} px at {args.mpp} um/px); ground truth "
          f"{stem.with_name(stem.stem + '.mask.png')} (1 px = {MASK_DOWNSAMPLE} px): "
          + ", ".join(f"{name} {100 * value:.1f}%" for name, value in info["fractions"].items()))
    return 0
