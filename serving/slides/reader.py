"""Open whole-slide images with OpenSlide and describe them (``histoedge slide info``).

OpenSlide comes from the ``openslide-bin`` wheel, so no system library is needed; every
format it reads works (Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Philips TIFF,
Ventana, generic tiled TIFF, DICOM WSI).  Problems become one-line :class:`SlideError`
messages: not a slide, a damaged or truncated file, no pixel size.

Example::

    with open_slide(Path("slide.svs")) as slide:
        info = describe(slide, Path("slide.svs"))
        print(info.mpp, info.levels)
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from histoedge.imaging import area_resize
from histoedge.serving.errors import SlideError

_STRIP_PIXELS = 1024 * 1024  # pixels read per OpenSlide call when making a thumbnail

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _openslide():
    try:
        import openslide
    except ImportError as error:  # the serve extra installs it
        raise SlideError("reading slides needs openslide-python and openslide-bin "
                         "(pip install 'histoedge[serve]')") from error
    return openslide


@contextlib.contextmanager
def open_slide(path: Path) -> Iterator["openslide.OpenSlide"]:  # noqa: F821
    """Open ``path`` with OpenSlide; raise :class:`SlideError` with the reason if it cannot be."""
    openslide = _openslide()
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir() and not any(path.iterdir()):
        raise SlideError(f"{path}: an empty folder, not a slide")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(_unsupported(path)) from None
    except openslide.OpenSlideError as error:
        raise SlideError(f"{path}: damaged slide: {error}") from None
    except OSError as error:
        raise SlideError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        yield slide
    finally:
        slide.close()


def _unsupported(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as error:
        return f"{path}: cannot read: {error.strerror or error}"
    if head in _TIFF_MAGIC:
        return f"{path}: a TIFF file OpenSlide cannot read: truncated, damaged or not tiled"
    return f"{path}: not a slide OpenSlide can read (unknown format)"


@dataclass(frozen=True)
class SlideInfo:
    """What ``histoedge slide info`` prints for one slide.

    Args:
        path: the slide file.
        vendor: OpenSlide's format name (``aperio``, ``generic-tiff``, ...).
        levels: (width, height, downsample) of each pyramid level, level 0 first.
        mpp: (x, y) microns per pixel at level 0, or None when the file records none.
        objective_power: the scan's objective magnification, if recorded.
        associated: names of associated images (label, macro, thumbnail).
        problems: one line per problem found (for example no pixel size).
    """

    path: str
    vendor: str
    levels: tuple[tuple[int, int, float], ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    associated: tuple[str, ...]
    problems: tuple[str, ...] = ()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.levels[0][0], self.levels[0][1]

    def format(self) -> str:
        lines = [f"{self.path}: {self.vendor}, {self.dimensions[0]} x {self.dimensions[1]} px"]
        if self.mpp is not None:
            width_mm, height_mm = (self.dimensions[0] * self.mpp[0] / 1000,
                                   self.dimensions[1] * self.mpp[1] / 1000)
            lines.append(f"  pixel size       {self.mpp[0]:.4g} x {self.mpp[1]:.4g} um "
                         f"({width_mm:.1f} x {height_mm:.1f} mm)")
        else:
            lines.append("  pixel size       unknown")
        power = "unknown" if self.objective_power is None else f"{self.objective_power:g}x"
        lines.append(f"  objective power  {power}")
        for index, (width, height, downsample) in enumerate(self.levels):
            mpp = "" if self.mpp is None else f", {self.mpp[0] * downsample:.3g} um/px"
            lines.append(f"  level {index}          {width} x {height} (downsample {downsample:.4g}{mpp})")
        lines.append(f"  associated       {', '.join(self.associated) or 'none'}")
        lines += [f"  problem: {problem}" for problem in self.problems]
        return "\n".join(lines)


def _float(properties, key: str) -> float | None:
    try:
        value = float(properties[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 else None


def slide_mpp(slide) -> tuple[float, float] | None:
    """Level-0 microns per pixel from the slide's metadata, or None."""
    openslide = _openslide()
    x = _float(slide.properties, openslide.PROPERTY_NAME_MPP_X)
    y = _float(slide.properties, openslide.PROPERTY_NAME_MPP_Y)
    if x is None and y is None:
        return None
    return (x or y, y or x)


def describe(slide, path: Path) -> SlideInfo:
    """A :class:`SlideInfo` for an open slide."""
    openslide = _openslide()
    properties = slide.properties
    mpp = slide_mpp(slide)
    problems = [] if mpp is not None else [
        "no pixel size in the file: give --mpp to 'histoedge slide predict'"]
    levels = tuple((int(w), int(h), float(d))
                   for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples))
    return SlideInfo(path=str(path), vendor=str(properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")),
                     levels=levels, mpp=mpp,
                     objective_power=_float(properties, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
                     associated=tuple(sorted(slide.associated_images)), problems=tuple(problems))


def thumbnail(slide, size: tuple[int, int]) -> np.ndarray:
    """The whole slide as uint8 RGB of exactly ``size`` (width, height), in bounded memory.

    OpenSlide's ``get_thumbnail`` reads a whole pyramid level at once, which grows with
    the slide; this reads the best level in strips and shrinks each strip (area
    interpolation), so memory stays at one strip whatever the slide's size.
    Transparent pixels (outside the scanned area) become white.
    """
    width, height = slide.dimensions
    out_w, out_h = size
    level = slide.get_best_level_for_downsample(min(width / out_w, height / out_h))
    level_w, level_h = slide.level_dimensions[level]
    downsample = slide.level_downsamples[level]
    result = np.empty((out_h, out_w, 3), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(1, level_w))
    scale = out_h / level_h
    for top in range(0, level_h, rows):
        bottom = min(level_h, top + rows)
        out_top, out_bottom = round(top * scale), round(bottom * scale)
        if out_bottom <= out_top:
            continue
        rgba = np.asarray(slide.read_region((0, round(top * downsample)), level, (level_w, bottom - top)))
        rgb = rgba[..., :3]
        if rgba[..., 3].min() < 255:  # integer compositing over white: no float copies of the strip
            alpha = rgba[..., 3:].astype(np.uint16)
            rgb = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        result[out_top:out_bottom] = area_resize(np.ascontiguousarray(rgb), (out_bottom - out_top, out_w))
    return result


def cli_info(args) -> int:
    """``histoedge slide info SLIDE...``: exit 1 if any slide cannot be read."""
    failed = 0
    for path in map(Path, args.slides):
        try:
            with open_slide(path) as slide:
                info = describe(slide, path)
        except SlideError as error:
            failed += 1
            print(f"histoedge slide info: error: {error}", file=sys.stderr)
            continue
        print(json.dumps(asdict(info)) if args.json else info.format())
    return 1 if failed else 0
