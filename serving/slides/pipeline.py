"""The bounded tile pipeline: read, resize and classify with every stage overlapping.

Reader threads cut batches of tiles out of the slide (OpenSlide and numpy release the
GIL) while earlier batches are being classified, so the model never waits for the disk.
At most ``readers + prefetch`` batches are being read and ``concurrency`` are being
classified at any time, so memory does not grow with the slide: only the tile boxes
and one row of probabilities per tile are kept.

Example::

    probabilities = classify_tiles(slide, plan, boxes, backend, batch_size=32)
"""

from __future__ import annotations

import collections
import concurrent.futures
import sys
import time
from dataclasses import dataclass

import numpy as np

from histoedge.imaging import area_resize
from histoedge.serving.errors import SlideError
from histoedge.serving.slides.tiling import TilePlan


@dataclass(frozen=True)
class PipelineSettings:
    """How many tiles move at once.

    Args:
        batch_size: tiles per inference request.
        concurrency: batches being classified at the same time.
        readers: threads reading tiles from the slide.
        timeout: seconds to wait for one batch's answer.
        progress: show a progress bar (on a terminal).
    """

    batch_size: int = 32
    concurrency: int = 2
    readers: int = 2
    timeout: float = 60.0
    progress: bool = True

    def __post_init__(self):
        for name in ("batch_size", "concurrency", "readers"):
            if getattr(self, name) < 1:
                raise SlideError(f"--{name.replace('_', '-')} must be at least 1")


def read_tile(slide, plan: TilePlan, box) -> np.ndarray:
    """One tile as uint8 RGB at the model's input size (transparent pixels become white)."""
    rgb = _white(np.asarray(slide.read_region((int(box[0]), int(box[1])), plan.level, plan.read_size)))
    if plan.read_size != plan.input_size:
        rgb = area_resize(np.ascontiguousarray(rgb), plan.input_size[::-1])
    return rgb


def _runs(boxes: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of boxes that sit side by side in one grid row."""
    runs, start = [], 0
    for index in range(1, len(boxes) + 1):
        if index == len(boxes) or boxes[index, 1] != boxes[start, 1] or \
                abs(boxes[index, 0] - boxes[index - 1, 0] - boxes[index - 1, 2]) > 1:
            runs.append((start, index))
            start = index
    return runs


def _white(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA region; transparent pixels (outside the scanned area) become white."""
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() == 255:
        return rgb
    weight = alpha[..., None].astype(np.float32) / 255.0
    return (rgb * weight + 255.0 * (1.0 - weight)).astype(np.uint8)


def read_batch(slide, plan: TilePlan, boxes: np.ndarray) -> np.ndarray:
    """Tiles at the model's input size.  Neighbouring tiles of a grid row are read with one
    OpenSlide call (each call costs about as much as a small tile) and cut apart."""
    import openslide

    width, height = plan.input_size
    read_w, read_h = plan.read_size
    downsample = plan.level_downsample
    batch = np.empty((len(boxes), height, width, 3), np.uint8)
    for start, stop in _runs(boxes):
        x0, y0 = int(boxes[start, 0]), int(boxes[start, 1])
        offsets = [int(round((int(box[0]) - x0) / downsample)) for box in boxes[start:stop]]
        try:
            region = slide.read_region((x0, y0), plan.level, (offsets[-1] + read_w, read_h))
        except openslide.OpenSlideError as error:
            raise SlideError(f"damaged slide: cannot read the tiles at ({x0}, {y0}): {error}") from None
        strip = _white(np.asarray(region))
        for index, offset in zip(range(start, stop), offsets):
            tile = strip[:, offset:offset + read_w]
            if (read_w, read_h) != (width, height):
                tile = area_resize(np.ascontiguousarray(tile), (height, width))
            batch[index] = tile
    return batch


class _Progress:
    """A tqdm bar of tiles and tiles per second on a terminal; nothing elsewhere."""

    def __init__(self, total: int, name: str, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=name[:24], unit="tile", file=sys.stderr,
                            dynamic_ncols=True, leave=True, smoothing=0.1)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def classify_tiles(slide, plan: TilePlan, boxes: np.ndarray, backend, settings: PipelineSettings,
                   name: str = "") -> np.ndarray:
    """Probabilities [len(boxes), C] for the level-0 ``boxes`` of ``slide``."""
    size = settings.batch_size
    starts = list(range(0, len(boxes), size))
    classes = len(backend.info.classes)
    results = np.zeros((len(boxes), classes), np.float32)
    reading: collections.deque = collections.deque()
    running: collections.deque = collections.deque()
    progress = _Progress(len(boxes), name, settings.progress)
    pool = concurrent.futures.ThreadPoolExecutor(settings.readers, thread_name_prefix="slide-read")
    next_read = 0
    try:
        while next_read < len(starts) or reading or running:
            while next_read < len(starts) and len(reading) < settings.readers + 1:
                start = starts[next_read]
                reading.append((start, pool.submit(read_batch, slide, plan, boxes[start:start + size])))
                next_read += 1
            if reading and len(running) < settings.concurrency:
                start, future = reading.popleft()
                images = future.result()
                running.append((start, len(images), backend.submit(images)))
                continue
            start, count, future = running.popleft()
            try:
                probabilities = future.result(timeout=settings.timeout)
            except concurrent.futures.TimeoutError:
                raise SlideError(f"no answer for a batch of tiles within {settings.timeout:g} s") from None
            if probabilities.shape != (count, classes):
                raise SlideError(f"the model answered shape {probabilities.shape} for {count} tiles")
            results[start:start + count] = probabilities
            progress.update(count)
    finally:
        progress.close()
        for _, future in list(reading) + [(None, f) for *_, f in running]:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def timed(function, *args, **kwargs):
    """(result, seconds) of a call."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started
