"""Fixtures for the slide tests: small synthetic slides and tiny model packages with a field of view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from histoedge.training.data.synth_slide import write_synthetic_slide
from tests.support.model_packages import write_model_version

MODEL = "tiny"
SIZE = 16
MODEL_MPP = 4.0  # 16 px at 4 um: tiles of 64 um, 128 px on a 0.5 um/px slide


def add_field_of_view(version_dir: Path, mpp: float = MODEL_MPP, size: int = SIZE) -> Path:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["field_of_view"] = {"microns_per_pixel": mpp, "image_size": [size, size]}
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    return version_dir


@pytest.fixture(scope="session")
def slide_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slide-models")
    add_field_of_view(write_model_version(root, MODEL, 1, size=SIZE))
    return root


@pytest.fixture(scope="session")
def slide(tmp_path_factory) -> Path:
    """A 1024 x 768 synthetic slide at 0.5 um/px with two pyramid levels, its mask beside it."""
    path = tmp_path_factory.mktemp("slides") / "synthetic.tiff"
    write_synthetic_slide(path, width=1024, height=768, mpp=0.5, seed=4)
    return path


@pytest.fixture(scope="session")
def truth(slide) -> tuple[np.ndarray, dict]:
    import cv2

    labels = cv2.imread(str(slide.with_name("synthetic.mask.png")), cv2.IMREAD_UNCHANGED)
    return labels, json.loads(slide.with_name("synthetic.mask.json").read_text())
