"""The field of view a model was trained at, for its manifest (:class:`FieldOfView`).

It comes from ``--mpp`` (microns per pixel of the training images) or from the
dataset's ``histoedge-dataset.json``; the image size comes from that file or from
one training image.  Without either the manifest records none and slide tiling
needs ``--force``.

Example::

    fov = run_field_of_view(Path("runs/r1"), mpp=None)   # from the dataset, if it declares one
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from histoedge.export.errors import ExportError
from histoedge.export.manifest import DATASET_INFO_FILE, FieldOfView, ManifestError

log = logging.getLogger(__name__)


def dataset_field_of_view(folder: Path) -> FieldOfView | None:
    """The field of view a dataset folder declares in ``histoedge-dataset.json``, if any."""
    path = Path(folder) / DATASET_INFO_FILE
    if not path.is_file():
        return None
    try:
        return FieldOfView.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, ManifestError) as error:
        raise ExportError(f"{path}: cannot read the dataset's field of view: {error}") from error


def image_size_of(path: Path) -> tuple[int, int] | None:
    """(height, width) of one image file as stored (EXIF orientation ignored), or None if it
    cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return int(image.height), int(image.width)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def field_of_view(mpp: float | None, dataset: Path | None, sample_images: list[Path],
                  input_size: int) -> FieldOfView | None:
    """Combine ``--mpp``, the dataset's declaration and one image's size into a FieldOfView.

    Args:
        mpp: ``--mpp`` (microns per pixel of the training images as stored), or None.
        dataset: dataset folder that may hold ``histoedge-dataset.json``, or None.
        sample_images: training images; the first readable one gives the stored size.
        input_size: the model's input side, the last resort for the size.
    """
    if mpp is not None and not mpp > 0:
        raise ExportError(f"--mpp must be positive, got {mpp}")
    declared = dataset_field_of_view(dataset) if dataset is not None else None
    if mpp is None:
        return declared
    if declared is not None:
        return FieldOfView(mpp, declared.image_size)
    for path in sample_images[:5]:
        size = image_size_of(path)
        if size is not None:
            return FieldOfView(mpp, size)
    log.warning("no training image could be read; assuming they were %d px, the model's input",
                input_size)
    return FieldOfView(mpp, (input_size, input_size))


def run_field_of_view(run_dir: Path, mpp: float | None, input_size: int) -> FieldOfView | None:
    """The field of view of a training run: ``--mpp`` or its dataset's declaration."""
    from histoedge.export.data import read_splits  # noqa: PLC0415

    dataset = None
    try:
        dataset = Path(json.loads((Path(run_dir) / "metrics.json").read_text())["data"])
    except (OSError, ValueError, KeyError, TypeError):
        log.info("%s/metrics.json names no dataset; field of view only from --mpp", run_dir)
    splits = Path(run_dir) / "splits.csv"
    images = [Path(row["path"]) for row in read_splits(splits)[:5]] if splits.is_file() else []
    return field_of_view(mpp, dataset, images, input_size)
