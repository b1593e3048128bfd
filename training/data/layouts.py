"""Dataset folder layouts: find image files and their labels without decoding anything.

Two layouts are recognised automatically:

* **BreakHis** - any file under the root whose name matches
  ``SOB_<B|M>_<subtype>-<year>-<patient>-<magnification>-<seq>.<ext>``; patient,
  subtype and magnification come from the name, wherever the file sits.
* **ImageFolder** - one sub-folder of the root per class (any number of classes);
  images may be nested deeper inside a class folder.

Example::

    layout, candidates, rejected = scan("data/synth", label="binary")
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from histoedge.training.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
BREAKHIS_PATTERN = re.compile(
    r"^SOB_(?P<kind>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d+)-(?P<patient>[0-9A-Za-z]+)"
    r"-(?P<magnification>\d+)-(?P<seq>\d+)\.[A-Za-z]+$")
BREAKHIS_SUBTYPES = {"A": "benign", "F": "benign", "PT": "benign", "TA": "benign",
                     "DC": "malignant", "LC": "malignant", "MC": "malignant", "PC": "malignant"}
LABEL_MODES = ("binary", "subtype")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Args:
        path: absolute file path.
        label: class name.
        patient: patient id (BreakHis ``<year>-<id>``, e.g. ``"14-22549AB"``) or None.
        subtype: BreakHis subtype code (``"A"``, ``"DC"``, ...) or None.
        magnification: ``"40X"``, ``"100X"``, ``"200X"``, ``"400X"`` or None.
    """

    path: str
    label: str
    patient: str | None = None
    subtype: str | None = None
    magnification: str | None = None


def normalise_magnification(value: str | int | None) -> str | None:
    """``"40"``, ``40``, ``"40x"`` -> ``"40X"``; None stays None."""
    if value is None:
        return None
    text = str(value).strip().upper().rstrip("X")
    if not text.isdigit():
        raise DataError(f"magnification {value!r} is not like 40X, 100X, 200X or 400X")
    return f"{int(text)}X"


def _image_files(root: Path) -> list[Path]:
    """All files under root with an image extension, sorted, hidden entries skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder, name).absolute())
    return found


def detect_layout(root: str | Path) -> str:
    """Return ``"breakhis"`` or ``"imagefolder"`` for the dataset folder ``root``."""
    return "breakhis" if any(BREAKHIS_PATTERN.match(p.name) for p in _image_files(Path(root))) \
        else "imagefolder"


def _breakhis(files: list[Path], label: str, magnification: str | None):
    records, rejected = [], []
    for path in files:
        match = BREAKHIS_PATTERN.match(path.name)
        if match is None:
            rejected.append((str(path), "file name does not match the BreakHis pattern"))
            continue
        subtype = match["subtype"]
        kind = "malignant" if match["kind"] == "M" else "benign"
        mag = f"{int(match['magnification'])}X"
        if magnification is not None and mag != magnification:
            continue
        records.append(ImageRecord(
            path=str(path), label=kind if label == "binary" else subtype,
            patient=f"{match['year']}-{match['patient']}", subtype=subtype, magnification=mag))
    return records, rejected


def _imagefolder(root: Path, files: list[Path]):
    records, rejected = [], []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            rejected.append((str(path), "image is not inside a class folder"))
            continue
        records.append(ImageRecord(path=str(path), label=parts[0]))
    return records, rejected


def scan(root: str | Path, *, label: str = "binary", magnification: str | None = None):
    """List a dataset's images and labels.

    Args:
        root: dataset folder.
        label: BreakHis only: ``"binary"`` (benign/malignant) or ``"subtype"`` (8 subtypes).
        magnification: BreakHis only: keep one magnification, e.g. ``"40X"``.

    Returns:
        ``(layout, records, rejected)``: layout name, :class:`ImageRecord` list in sorted path
        order, and ``(path, reason)`` for image files that cannot be given a label.

    Raises:
        DataError: missing folder, no images, unknown label mode, magnification filter on an
            ImageFolder dataset or a filter that keeps nothing.
    """
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise DataError(f"dataset folder {root_path} does not exist or is not a folder")
    if label not in LABEL_MODES:
        raise DataError(f"label must be one of {', '.join(LABEL_MODES)}, got {label!r}")
    magnification = normalise_magnification(magnification)
    files = _image_files(root_path)
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                        f"found under {root_path}")
    layout = "breakhis" if any(BREAKHIS_PATTERN.match(p.name) for p in files) else "imagefolder"
    if layout == "breakhis":
        records, rejected = _breakhis(files, label, magnification)
        if not records:
            found = sorted({f"{int(m['magnification'])}X" for p in files
                            if (m := BREAKHIS_PATTERN.match(p.name))}, key=lambda s: int(s[:-1]))
            raise DataError(f"no BreakHis images at magnification {magnification} under "
                            f"{root_path}; found {', '.join(found)}")
    else:
        if magnification is not None:
            raise DataError(f"--magnification needs the BreakHis layout, but {root_path} "
                            "is an ImageFolder dataset")
        if label != "binary":
            raise DataError(f"label={label!r} needs the BreakHis layout, but {root_path} "
                            "is an ImageFolder dataset (its classes are its sub-folders)")
        records, rejected = _imagefolder(root_path, files)
        if not records:
            raise DataError(f"no images inside class sub-folders of {root_path}; an ImageFolder "
                            "dataset needs one sub-folder per class")
    return layout, records, rejected
