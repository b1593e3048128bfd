"""Is a dataset H&E-stained tissue?  Chooses the ``auto`` augmentation preset from the images.

Stain jitter and flips only make sense for H&E tissue; on grayscale, IHC, fluorescence or
photographs they wreck the images.  Two checks on a sample of the training images (NumPy only):

* **grayscale**: R = G = B (within 2 levels) on at least 98% of the pixels;
* **H&E colour profile**: of the stained, coloured pixels (optical density above background and
  below black, channels not all equal), the fraction whose optical-density direction lies within
  20 degrees of the cone of non-negative haematoxylin/eosin mixtures (Ruifrok-Johnston vectors)
  with green the most absorbed channel, as for both stains.  Measured: 0.89 on the built-in
  synthetic H&E tiles, 0.01 on patches of scikit-learn's sample photographs, 0.21 on a portrait
  photograph; DAB (IHC brown) absorbs blue most and fails the test.  Below 0.5 the data is not
  H&E-like.

Example::

    preset, reason = choose_preset(dataset.images)   # ("generic", "grayscale: R = G = B on 100.0% ...")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from histoedge.training.data.augment import RGB_FROM_HED, AugmentConfig

log = logging.getLogger(__name__)

GRAYSCALE_FRACTION = 0.98
HE_LIKE_FRACTION = 0.5
CONE_DEGREES = 20.0
SAMPLE_IMAGES = 256
SAMPLE_PIXELS = 1024


@dataclass(frozen=True)
class ColourProfile:
    """What :func:`colour_profile` measured on a sample of images.

    Attributes:
        grayscale_fraction: pixels with R = G = B (within 2 levels).
        stained_fraction: pixels neither background nor black.
        he_like_fraction: of the stained coloured pixels, those with an H&E-like optical density.
        n_pixels: pixels looked at.
    """

    grayscale_fraction: float
    stained_fraction: float
    he_like_fraction: float
    n_pixels: int


def _cone_angle(directions: np.ndarray) -> np.ndarray:
    """Angle in degrees from unit OD directions [N, 3] to the cone {a*H + b*E, a, b >= 0}."""
    h, e = RGB_FROM_HED[0], RGB_FROM_HED[1]
    basis = np.stack([h, e], axis=1)  # [3, 2]
    weights = directions @ np.linalg.pinv(basis).T  # least-squares stain amounts [N, 2]
    in_plane = np.linalg.norm(weights @ basis.T, axis=1)
    to_plane = np.degrees(np.arccos(np.clip(in_plane, 0.0, 1.0)))
    to_edges = np.degrees(np.arccos(np.clip(np.maximum(directions @ h, directions @ e), -1.0, 1.0)))
    return np.where((weights >= 0).all(axis=1), to_plane, to_edges)


def colour_profile(images: np.ndarray, *, seed: int = 0) -> ColourProfile:
    """Measure a sample (up to 256 images, 1024 pixels each) of uint8 RGB images [N, H, W, 3]."""
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), min(len(images), SAMPLE_IMAGES), replace=False)
    pixels = images[chosen].reshape(len(chosen), -1, 3)
    if pixels.shape[1] > SAMPLE_PIXELS:
        pixels = pixels[:, rng.choice(pixels.shape[1], SAMPLE_PIXELS, replace=False)]
    rgb = pixels.reshape(-1, 3).astype(np.float64)
    spread = rgb.max(axis=1) - rgb.min(axis=1)
    od = -np.log((rgb + 1.0) / 256.0)
    largest = od.max(axis=1)
    stained = (largest > 0.15) & (largest < 3.0)
    coloured = stained & (spread > 10)
    he_like = 0.0
    if coloured.any():
        od_c = od[coloured]
        directions = od_c / np.linalg.norm(od_c, axis=1, keepdims=True)
        green_most = od_c[:, 1] >= 0.95 * od_c.max(axis=1)
        he_like = float(np.mean((_cone_angle(directions) < CONE_DEGREES) & green_most))
    return ColourProfile(grayscale_fraction=float(np.mean(spread <= 2)), stained_fraction=float(stained.mean()),
                         he_like_fraction=he_like, n_pixels=int(len(rgb)))


def choose_preset(images: np.ndarray) -> tuple[str, str]:
    """``("histology" | "generic", reason)`` for uint8 RGB images [N, H, W, 3] (see module docstring)."""
    profile = colour_profile(images)
    if profile.grayscale_fraction >= GRAYSCALE_FRACTION:
        return "generic", f"grayscale: R = G = B on {100 * profile.grayscale_fraction:.1f}% of pixels"
    if profile.he_like_fraction < HE_LIKE_FRACTION:
        return "generic", (f"colour profile far from H&E: {100 * profile.he_like_fraction:.0f}% of stained "
                           f"pixels look like haematoxylin/eosin (H&E needs >= {100 * HE_LIKE_FRACTION:.0f}%)")
    return "histology", (f"H&E-like colours: {100 * profile.he_like_fraction:.0f}% of stained pixels look like "
                         "haematoxylin/eosin")


def resolve_augmentation(config: AugmentConfig, images: np.ndarray) -> AugmentConfig:
    """``config`` with every strength set; an ``auto`` preset is chosen from ``images`` and logged.

    An explicit preset always wins; explicit strengths override the preset's.

    Example::

        resolve_augmentation(AugmentConfig(), dataset.images).preset   # "histology" or "generic"
    """
    if config.preset != "auto":
        return config.resolved()
    preset, reason = choose_preset(images)
    log.info("augmentation preset %s (auto): %s", preset, reason)
    return config.resolved(preset)
