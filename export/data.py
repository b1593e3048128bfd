"""Images and labels for export-time checks: parity, test metrics and int8 calibration.

Images are decoded the way the serving side and training do it (:mod:`histoedge.imaging`:
Pillow, then an area resize equal to OpenCV's ``INTER_AREA``) to S x S, uint8 [N, S, S, 3].

Example::

    images, labels = split_images(Path("run/splits.csv"), "test", size=64, classes=("benign", "malignant"))
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from histoedge.export.repository import ExportError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_image(path: Path, size: int) -> np.ndarray | None:
    """RGB uint8 [size, size, 3] decoded exactly as training decodes it, or ``None`` if it cannot be."""
    from histoedge.training.data.images import decode_image  # noqa: PLC0415

    try:
        return decode_image(Path(path).read_bytes(), size)
    except (OSError, ValueError):
        return None


def read_images(paths: list[Path], size: int) -> tuple[np.ndarray, list[int]]:
    """Decode ``paths``; return the images and the indices of the ones that decoded."""
    images, kept = [], []
    for index, path in enumerate(paths):
        image = read_image(path, size)
        if image is None:
            log.warning("skipping unreadable image %s", path)
            continue
        images.append(image)
        kept.append(index)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), kept
    return np.stack(images), kept


def aspect_ratios(paths: list[Path]) -> np.ndarray:
    """Width / height of each readable image file, from its header (unreadable ones left out)."""
    from histoedge.serving.errors import InvalidInputError  # noqa: PLC0415
    from histoedge.serving.images import image_dimensions  # noqa: PLC0415

    ratios = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                head = handle.read(1 << 16)
            _, width, height = image_dimensions(head)
        except (OSError, InvalidInputError):
            continue
        if width > 0 and height > 0:
            ratios.append(width / height)
    return np.array(ratios, dtype=np.float64)


def read_splits(splits_csv: Path) -> list[dict[str, str]]:
    """Rows of ``splits.csv`` (path,label,patient,split)."""
    try:
        with open(splits_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ExportError(f"cannot read {splits_csv}: {error}") from error
    if rows and not {"path", "label", "split"} <= set(rows[0]):
        raise ExportError(f"{splits_csv} needs the columns path,label,split")
    return rows


def split_images(splits_csv: Path, split: str, size: int, classes: tuple[str, ...],
                 limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images and class indices of one split (a reproducible random subset if ``limit``)."""
    rows = [r for r in read_splits(splits_csv) if r["split"] == split]
    if limit is not None and len(rows) > limit:
        order = np.random.default_rng(seed).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(order)]
    index = {name: i for i, name in enumerate(classes)}
    unknown = {r["label"] for r in rows} - set(index)
    if unknown:
        raise ExportError(f"{splits_csv}: labels {sorted(unknown)} are not in classes {list(classes)}")
    images, kept = read_images([Path(r["path"]) for r in rows], size)
    labels = np.array([index[rows[i]["label"]] for i in kept], dtype=np.int64)
    return images, labels


def folder_images(folder: Path, size: int, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Every image under ``folder`` (recursively), a reproducible random subset if ``limit``."""
    paths = image_paths(folder)
    if limit is not None and len(paths) > limit:
        order = np.random.default_rng(seed).permutation(len(paths))[:limit]
        paths = [paths[i] for i in sorted(order)]
    images, _ = read_images(paths, size)
    return images


def image_folder(folder: Path, size: int, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A labelled ImageFolder (one sub-folder per class name) -> images, class indices."""
    folder = Path(folder)
    missing = [c for c in classes if not (folder / c).is_dir()]
    if missing:
        raise ExportError(f"{folder} has no sub-folder for classes {missing} "
                          "(expected one sub-folder per class)")
    images, labels = [], []
    for index, name in enumerate(classes):
        batch = folder_images(folder / name, size)
        images.append(batch)
        labels.append(np.full(len(batch), index, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def image_paths(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray,
                           threshold: float | None, positive_class: int | None) -> dict:
    """Test metrics computed exactly as the training report computes them (:mod:`training.metrics`)."""
    from histoedge.training.metrics import classification_metrics as compute  # noqa: PLC0415

    if len(labels) == 0:
        return {}
    return compute(labels, probabilities, threshold=threshold,
                   positive_class=1 if positive_class is None else positive_class)
