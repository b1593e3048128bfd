"""A synthetic H&E dataset in the BreakHis folder and file-name layout.

Tiles are composed in optical-density space (Beer-Lambert): an eosin map
(stroma with fibre texture, cytoplasm) and a haematoxylin map (nuclei with
chromatin texture) are mixed with per-patient stain vectors and turned into RGB.
Each tile has a latent *grade* in [0, 1] that drives the nuclear features
pathologists use: size, pleomorphism, shape irregularity, hyperchromasia,
crowding, nucleoli and the nuclear/cytoplasmic ratio. Benign and malignant
grades overlap (patient-level spread, benign tiles with atypia, bland malignant
tiles), and stain variation, blur and noise are added, so the task is learnable
but not trivial. Output is deterministic for a seed.

Example::

    histoedge data synth --out data/synth --n 600 --size 64 --seed 0
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoedge.training.errors import DataError
from histoedge.training.data.synth_render import (FIELD_MICRONS, MAGNIFICATIONS, SUBTYPES, TileSpec,
                                                  render_tile)

log = logging.getLogger(__name__)

BENIGN_SUBTYPES = ("A", "F", "PT", "TA")
MALIGNANT_SUBTYPES = ("DC", "LC", "MC", "PC")
_YEAR = "14"
BREAKHIS_PATIENTS = 82


@dataclass
class SynthSummary:
    """What :func:`generate_synthetic` wrote."""

    root: str
    images: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    subtypes: dict[str, int] = field(default_factory=dict)
    magnifications: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
        return (f"wrote {sum(self.images.values())} images from {sum(self.patients.values())} "
                f"patients to {self.root}\n"
                f"  images per class:   {counts(self.images)}\n"
                f"  patients per class: {counts(self.patients)}\n"
                f"  images per subtype: {counts(self.subtypes)}\n"
                f"  magnifications:     {counts(self.magnifications)}")


def _patient_plan(rng: np.random.Generator, n: int, patients: int, malignant_fraction: float):
    """Assign labels, subtypes and image counts to patients (each patient has one label)."""
    n_mal_img = int(round(n * malignant_fraction))
    n_ben_img = n - n_mal_img
    n_mal_pat = int(round(patients * malignant_fraction))
    n_mal_pat = min(max(n_mal_pat, 1 if n_mal_img else 0), patients - (1 if n_ben_img else 0))
    n_ben_pat = patients - n_mal_pat
    plan = []
    for label, n_pat, n_img, subtypes in (("benign", n_ben_pat, n_ben_img, BENIGN_SUBTYPES),
                                          ("malignant", n_mal_pat, n_mal_img, MALIGNANT_SUBTYPES)):
        if n_pat == 0:
            continue
        if n_img < n_pat:
            raise DataError(f"{n_img} {label} images cannot be shared by {n_pat} patients; "
                            "raise --n or lower --patients")
        # uneven but bounded patient sizes, as in BreakHis
        weights = rng.uniform(0.5, 1.5, n_pat)
        counts = np.floor(weights / weights.sum() * (n_img - n_pat)).astype(int) + 1
        counts[rng.permutation(n_pat)[: n_img - counts.sum()]] += 1
        for i in range(n_pat):
            plan.append((label, subtypes[i % len(subtypes)], int(counts[i])))
    return plan


def _patient_ids(rng: np.random.Generator, count: int) -> list[str]:
    numbers = rng.choice(np.arange(10000, 30000), size=count, replace=False)
    suffixes = ("", "", "", "AB", "CD", "EF")
    return [f"{num}{suffixes[rng.integers(len(suffixes))]}" for num in numbers]


def _tile_specs(rng: np.random.Generator, plan, stain_shift: float = 0.0) -> tuple[list[TileSpec], list[tuple]]:
    """One TileSpec per image plus its (label, subtype, patient id, magnification, seq)."""
    specs, names = [], []
    ids = _patient_ids(rng, len(plan))
    for (label, subtype, count), pid in zip(plan, ids):
        malignant = label == "malignant"
        # patient-level grade and stain: the between-patient spread makes the task non-trivial
        patient_grade = rng.normal(0.70 if malignant else 0.22, 0.05)
        stain = rng.normal(0.0, 1.0, 6)
        mags = np.resize(MAGNIFICATIONS, count)
        seq = {m: 0 for m in MAGNIFICATIONS}
        for mag in mags:
            grade = patient_grade + rng.normal(0.0, 0.11)
            if rng.random() < 0.08:  # benign atypia / bland malignant areas
                grade += rng.uniform(0.15, 0.35) * (-1 if malignant else 1)
            specs.append(TileSpec(grade=float(np.clip(grade, 0.0, 1.0)), subtype=subtype,
                                  magnification=int(mag), stain=stain,
                                  seed=int(rng.integers(2**63 - 1)), stain_shift=stain_shift))
            seq[mag] += 1
            names.append((label, subtype, pid, int(mag), seq[mag]))
    return specs, names


def breakhis_path(root: Path, label: str, subtype: str, pid: str, mag: int, seq: int) -> Path:
    """The BreakHis path of one image under ``root``."""
    letter = "M" if label == "malignant" else "B"
    folder = root / "BreaKHis_v1" / "histology_slides" / "breast" / label / "SOB" / subtype
    patient_dir = folder / f"SOB_{letter}_{subtype}_{_YEAR}-{pid}" / f"{mag}X"
    return patient_dir / f"SOB_{letter}_{subtype}-{_YEAR}-{pid}-{mag}-{seq:03d}.png"


def generate_synthetic(out: str | Path, *, n: int = 2000, size: int = 96, patients: int | None = None,
                       malignant_fraction: float = 0.69, seed: int = 0,
                       stain_shift: float = 0.0) -> SynthSummary:
    """Write ``n`` synthetic H&E tiles as PNG in the BreakHis layout under ``out``.

    Args:
        out: folder to create; ``out/BreaKHis_v1/...`` is written inside it.
        n: number of images.
        size: image side in pixels.
        patients: number of patients; every patient gets one label and one subtype. None: 82,
            as BreakHis, or ``n // 5`` when that is smaller, so each patient has >= 5 images.
        malignant_fraction: fraction of images (and patients) that are malignant.
        seed: random seed; the same seed writes byte-identical files.
        stain_shift: 0..1; moves every tile's haematoxylin and eosin vectors and intensities
            towards another laboratory's (1 = fully).  The same seed with a different shift
            writes the same patients, file names and tissue in other colours: a test set from
            "another hospital" for measuring stain robustness.

    Returns:
        A :class:`SynthSummary` with image, patient, subtype and magnification counts.

    Example::

        summary = generate_synthetic("data/synth", n=600, size=64)
        print(summary.format())
    """
    import cv2

    if patients is None:
        patients = max(2, min(BREAKHIS_PATIENTS, n // 5))
    if n < 2 or patients < 2 or patients > n:
        raise DataError("--n must be at least 2 and --patients between 2 and --n")
    if size < 16:
        raise DataError(f"--size {size} is too small; use at least 16 pixels")
    if not 0.0 <= stain_shift <= 1.0:
        raise DataError(f"--stain-shift must be between 0 and 1, got {stain_shift}")
    if not 0.0 < malignant_fraction < 1.0:
        raise DataError(f"--malignant-fraction must be between 0 and 1, got {malignant_fraction}")
    root = Path(out)
    if (root / "BreaKHis_v1").exists() and any((root / "BreaKHis_v1").rglob("*.png")):
        raise DataError(f"{root / 'BreaKHis_v1'} already holds images; choose an empty --out")
    rng = np.random.default_rng(seed)
    plan = _patient_plan(rng, n, patients, malignant_fraction)
    specs, names = _tile_specs(rng, plan, stain_shift)

    summary = SynthSummary(root=str(root))
    for label, subtype, count in plan:
        summary.patients[label] = summary.patients.get(label, 0) + 1
    if min(summary.patients.get(k, 0) for k in ("benign", "malignant")) < 3:
        log.warning("fewer than 3 patients in a class (%s): a patient-grouped train/val/test "
                    "split of this dataset is impossible; raise --patients", summary.patients)
    paths = [breakhis_path(root, *name) for name in names]
    for path in {p.parent for p in paths}:
        path.mkdir(parents=True, exist_ok=True)

    def render_and_write(item):
        spec, path = item
        tile = render_tile(spec, size)
        ok = cv2.imwrite(str(path), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise DataError(f"could not write {path}")

    # every tile has its own seed, so the thread schedule cannot change the output
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(render_and_write, zip(specs, paths)))
    _declare_field_of_view(root, size)
    for label, subtype, _pid, mag, _seq in names:
        summary.images[label] = summary.images.get(label, 0) + 1
        summary.subtypes[subtype] = summary.subtypes.get(subtype, 0) + 1
        summary.magnifications[f"{mag}X"] = summary.magnifications.get(f"{mag}X", 0) + 1
    return summary


def _declare_field_of_view(root: Path, size: int) -> None:
    """Write ``histoedge-dataset.json``: export records it so slides are tiled at this scale."""
    from histoedge.export.manifest import DATASET_INFO_FILE, FieldOfView

    fov = FieldOfView(FIELD_MICRONS / size, (size, size))
    (root / DATASET_INFO_FILE).write_text(json.dumps(
        {**fov.to_dict(), "note": "synthetic tiles rendered at the 200X reference scale"}, indent=2) + "\n")


def cli_main(args) -> int:
    """Handler of ``histoedge data synth``."""
    summary = generate_synthetic(args.out, n=args.n, size=args.size, patients=args.patients,
                                 malignant_fraction=args.malignant_fraction, seed=args.seed,
                                 stain_shift=args.stain_shift)
    print(summary.format())
    return 0


__all__ = ["generate_synthetic", "cli_main", "SynthSummary", "breakhis_path", "SUBTYPES",
           "BENIGN_SUBTYPES", "MALIGNANT_SUBTYPES"]
