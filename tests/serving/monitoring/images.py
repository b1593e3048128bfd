"""Synthetic H&E tiles and the two ways the tests spoil them (stain shift, blur)."""

from __future__ import annotations

import cv2
import numpy as np

from histoedge.serving.monitoring.features import _HED_FROM_RGB, _RGB_FROM_HED
from histoedge.training.data.synth import _patient_plan, _tile_specs
from histoedge.training.data.synth_render import render_tiles


def he_tiles(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic H&E tiles (RGB uint8) and their labels (1 = malignant)."""
    rng = np.random.default_rng(seed)
    specs, names = _tile_specs(rng, _patient_plan(rng, n, max(4, n // 8), 0.5))
    return render_tiles(specs, size), np.array([name[0] == "malignant" for name in names], dtype=int)


def stain_shift(images: np.ndarray, hematoxylin: float = 0.4, eosin: float = 2.5) -> np.ndarray:
    """Scale the haematoxylin and eosin amounts (colour deconvolution): by default a strong
    shift to pale nuclei and heavy eosin, as a failed staining run gives."""
    od = -np.log((images.astype(np.float64) + 1) / 256)
    stains = od @ _HED_FROM_RGB
    stains[..., 0] *= hematoxylin
    stains[..., 1] *= eosin
    return np.clip(256 * np.exp(-(stains @ _RGB_FROM_HED)) - 1, 0, 255).astype(np.uint8)


def blur(images: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])
