"""Train/val/test splits, stratified by class and grouped by patient, and their CSV file.

When patient ids are known (BreakHis) no patient appears in two splits, so test
scores are patient-level; otherwise every image is its own group.

Example::

    splits = split_dataset(dataset, fractions=(0.7, 0.15, 0.15), seed=0)
    write_splits_csv("runs/r1/splits.csv", dataset, splits)
    again = splits_from_rows(dataset, read_splits_csv("runs/r1/splits.csv"))
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoedge.training.errors import DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
_ATTEMPTS = 10


@dataclass(frozen=True)
class SplitRow:
    """One row of ``splits.csv``."""

    path: str
    label: str
    patient: str | None
    split: str


def _assign(counts: np.ndarray, fractions: np.ndarray, rng) -> np.ndarray:
    """Greedy stratified assignment of groups to splits; returns the split of each group.

    Groups are visited largest first (with random jitter, so seeds differ) and each goes to
    the split whose per-class targets are least filled, weighted by the group's classes.
    """
    target = fractions[:, None] * counts.sum(0)[None, :]  # [splits, classes]
    filled = np.zeros_like(target)
    sizes = counts.sum(1)
    order = np.argsort(-sizes * rng.uniform(0.5, 1.5, len(sizes)), kind="stable")
    split_of = np.empty(len(counts), dtype=np.int64)
    for g in order:
        unfilled = 1.0 - filled / np.maximum(target, 1e-9)
        choice = int(np.argmax(unfilled @ counts[g]))  # ties go to the larger split
        split_of[g] = choice
        filled[choice] += counts[g]
    return split_of


def _balance_error(labels, splits, num_classes: int) -> float:
    """Largest gap between a split's class proportions and the whole dataset's."""
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    return max(float(np.abs(np.bincount(labels[idx], minlength=num_classes) / len(idx)
                            - overall).max()) for idx in splits.values())


def split_dataset(dataset, *, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Split a :class:`~training.data.images.Dataset` into train, val and test indices.

    Stratified by class and grouped by patient when every record has one (a greedy
    stratified group assignment, as in scikit-learn's ``StratifiedGroupKFold`` but with
    unequal split sizes). Several shuffles are tried, deterministically from ``seed``, and
    the first one whose class proportions are all within 0.05 of the dataset's (else the
    closest) is kept.

    Args:
        dataset: the dataset (needs ``labels``, ``records``, ``classes``).
        fractions: (train, val, test), each > 0, summing to 1.
        seed: random seed.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 index arrays.

    Raises:
        DataError: bad fractions, or a split would be empty or miss a class
            (too few patients or images).
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1, "
                        f"got {fractions}")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    classes = list(dataset.classes)
    patients = [r.patient for r in dataset.records]
    grouped = all(p is not None for p in patients)
    unit = "patients" if grouped else "images"
    groups = np.unique(np.asarray(patients if grouped else np.arange(len(labels)), dtype=str),
                       return_inverse=True)[1]
    for k, name in enumerate(classes):
        n_groups = len(np.unique(groups[labels == k]))
        if n_groups < 3:
            raise DataError(f"class {name!r} has only {n_groups} {unit}; a train/val/test split "
                            f"needs at least 3 {unit} per class")
    counts = np.zeros((groups.max() + 1, len(classes)))
    np.add.at(counts, (groups, labels), 1)
    rng = np.random.default_rng(seed)
    best, best_error = None, np.inf
    for _ in range(_ATTEMPTS):
        split_of = _assign(counts, np.array(fractions), rng)[groups]
        splits = {name: np.flatnonzero(split_of == k) for k, name in enumerate(SPLIT_NAMES)}
        if any(len(np.unique(labels[idx])) < len(classes) for idx in splits.values()):
            continue
        error = _balance_error(labels, splits, len(classes))
        if error < best_error:
            best, best_error = splits, error
        if error < 0.05:
            break
    if best is None:
        raise DataError(f"could not split {len(labels)} images ({len(np.unique(groups))} {unit}) "
                        f"into train/val/test with every class in every split; add more {unit} "
                        "or change the split fractions")
    log.info("split by %s: %s (largest class-proportion gap %.3f)", unit,
             ", ".join(f"{name} {len(idx)}" for name, idx in best.items()), best_error)
    return {name: idx.astype(np.int64) for name, idx in best.items()}


def write_splits_csv(path: str | Path, dataset, splits: dict[str, np.ndarray]) -> None:
    """Write ``path,label,patient,split`` rows (patient empty when unknown), in dataset order."""
    split_of = {}
    for name, idx in splits.items():
        for i in np.asarray(idx).tolist():
            if i in split_of:
                raise DataError(f"image {dataset.records[i].path} is in splits {split_of[i]!r} "
                                f"and {name!r}")
            split_of[i] = name
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "patient", "split"))
        for i in sorted(split_of):
            record = dataset.records[i]
            writer.writerow((record.path, record.label, record.patient or "", split_of[i]))


def read_splits_csv(path: str | Path) -> list[SplitRow]:
    """Read a ``splits.csv`` written by :func:`write_splits_csv`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"splits file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label", "patient", "split"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}")
        rows = [SplitRow(r["path"], r["label"], r["patient"] or None, r["split"]) for r in reader]
    bad = {r.split for r in rows} - set(SPLIT_NAMES)
    if bad:
        raise DataError(f"{path} has unknown split name(s) {', '.join(sorted(bad))}")
    return rows


def splits_from_rows(dataset, rows: list[SplitRow]) -> dict[str, np.ndarray]:
    """Map rows of :func:`read_splits_csv` back onto ``dataset`` indices (to resume a run)."""
    index = {r.path: i for i, r in enumerate(dataset.records)}
    missing = [r.path for r in rows if r.path not in index]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in the splits file are not in the "
                        f"dataset, e.g. {missing[0]}")
    return {name: np.array(sorted(index[r.path] for r in rows if r.split == name), dtype=np.int64)
            for name in SPLIT_NAMES}
