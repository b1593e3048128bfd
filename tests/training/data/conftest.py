"""Fixtures for the data tests: a tiny synthetic BreakHis tree and tiny ImageFolder trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from histoedge.training.data.synth import generate_synthetic

SYNTH_ARGS = dict(n=96, size=32, patients=16, malignant_fraction=0.69, seed=0)


@pytest.fixture(scope="session")
def synth_args() -> dict:
    """Arguments of :func:`generate_synthetic` that built ``synth_root``."""
    return dict(SYNTH_ARGS)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 96-image, 16-patient synthetic BreakHis tree (read-only: copy before changing it)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, **SYNTH_ARGS)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private, writable copy of the synthetic tree."""
    return Path(shutil.copytree(synth_root, tmp_path / "synth"))


def write_png(path: Path, colour, size: int = 24, seed: int = 0) -> Path:
    """A noisy solid-colour RGB image written as PNG (OpenCV writes BGR)."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.array(colour, float) + rng.normal(0, 8, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def three_class_folder(tmp_path) -> Path:
    """ImageFolder with classes a, b, c (4 images each), some nested one folder deeper."""
    root = tmp_path / "folder"
    colours = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200)}
    for name, colour in colours.items():
        for i in range(4):
            sub = root / name / ("deeper" if i % 2 else "")
            write_png(sub / f"{name}_{i}.png", colour, seed=i + 10 * len(name))
    return root
