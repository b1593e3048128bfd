"""Decode a dataset folder into memory: uint8 RGB images, labels, and reports of bad files.

Example::

    from histoedge.training.data import load_dataset

    dataset = load_dataset("data/synth", image_size=64, magnification="40X")
    print(dataset.classes, dataset.images.shape, len(dataset.unreadable))
    dataset.write_reports("runs/r1")
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoedge.imaging import decode_resized
from histoedge.training.errors import DataError
from histoedge.training.data.layouts import ImageRecord, scan

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Images of one dataset folder, decoded and resized.

    Attributes:
        records: one :class:`ImageRecord` per kept image, aligned with ``images``/``labels``.
        images: uint8 RGB array [N, S, S, 3].
        labels: int64 class indices [N] into ``classes``.
        classes: sorted class names.
        layout: ``"imagefolder"`` or ``"breakhis"``.
        unreadable: ``(path, reason)`` for files that could not be decoded or labelled.
        duplicates: ``(path, duplicate_of)`` for byte-identical copies (the first one is kept).
    """

    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    layout: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def patients(self) -> np.ndarray | None:
        """Patient id per image (object array), or None when any patient is unknown."""
        ids = [r.patient for r in self.records]
        return None if any(p is None for p in ids) else np.asarray(ids, dtype=object)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def write_reports(self, run_dir: str | Path) -> None:
        """Write ``unreadable.csv`` (path,reason) and ``duplicates.csv`` (path,duplicate_of)."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for name, header, rows in (("unreadable.csv", ("path", "reason"), self.unreadable),
                                   ("duplicates.csv", ("path", "duplicate_of"), self.duplicates)):
            with open(run_dir / name, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(rows)


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP bytes to uint8 RGB [S, S, 3] (area resize).

    The server decodes requests with the same function (:mod:`histoedge.imaging`), so a
    served image reaches the model with the pixels training used.

    Raises:
        ValueError: the bytes are empty or not a decodable image.
    """
    return decode_resized(data, (image_size, image_size))


def _read(path: str, image_size: int):
    """Worker: (digest, image or None, reason or None) for one file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return None, None, f"cannot read file ({error.strerror or error})"
    digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        return digest, decode_image(data, image_size), None
    except ValueError as error:
        return digest, None, str(error)


def load_dataset(root: str | Path, *, image_size: int, label: str = "binary",
                 magnification: str | None = None, workers: int | None = None) -> Dataset:
    """Load an ImageFolder or BreakHis dataset folder (the layout is detected).

    Files that cannot be decoded are listed in ``unreadable`` and byte-identical copies in
    ``duplicates``; neither stops loading.

    Args:
        root: dataset folder.
        image_size: side S of the square uint8 images.
        label: BreakHis only: ``"binary"`` (benign/malignant) or ``"subtype"`` (8 subtypes).
        magnification: BreakHis only: keep one magnification, e.g. ``"40X"``.
        workers: decoding threads (default: CPU count, at most 8).

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: missing folder, no images, nothing decodable, or fewer than two classes.

    Example::

        dataset = load_dataset("data/BreaKHis_v1", image_size=64, label="subtype")
    """
    if int(image_size) < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    layout, candidates, unreadable = scan(root, label=label, magnification=magnification)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda r: _read(r.path, int(image_size)), candidates,
                                chunksize=1))
    records, images, duplicates, seen = [], [], [], {}
    for record, (digest, image, reason) in zip(candidates, results):
        if image is None:
            unreadable.append((record.path, reason))
        elif digest in seen:
            duplicates.append((record.path, seen[digest]))
        else:
            seen[digest] = record.path
            records.append(record)
            images.append(image)
    for path, reason in unreadable:
        log.warning("skipping unreadable file %s: %s", path, reason)
    if duplicates:
        log.warning("skipping %d byte-identical duplicate file(s)", len(duplicates))
    if not records:
        raise DataError(f"none of the {len(candidates)} image files under {root} could be "
                        "decoded; see the unreadable list")
    classes = sorted({r.label for r in records})
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) found under {root}; "
                        "classification needs at least two")
    index = {name: i for i, name in enumerate(classes)}
    dataset = Dataset(records=records, images=np.stack(images),
                      labels=np.array([index[r.label] for r in records], dtype=np.int64),
                      classes=classes, layout=layout, unreadable=unreadable,
                      duplicates=duplicates)
    log.info("loaded %d images (%s layout, %s) from %s; %d unreadable, %d duplicates",
             len(records), layout, ", ".join(f"{k} {v}" for k, v in dataset.class_counts().items()),
             root, len(unreadable), len(duplicates))
    return dataset
