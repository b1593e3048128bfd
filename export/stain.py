"""Stain normalisation (density, Macenko, Reinhard): the one implementation training and serving share.

H&E colour differs between laboratories, stain batches and scanners.  A *reference* is fitted
once on training images (or on a reference image the user names); every image, in training
and in the server, is then mapped to the reference's colours by :meth:`StainReference.normalise`.

This module lives in ``export`` next to the other contracts between stages (the manifest,
``ensemble.json``): the reference travels in the model package's ``manifest.json``
(``preprocessing.stain_normalisation``), the training pipeline imports it to normalise its
images and the server imports it to normalise requests.  It uses numpy only (no TensorFlow,
no OpenCV), so both sides run exactly the same arithmetic and produce the same pixels.

Methods:
    ``density``: each tile's optical densities are scaled by one factor so that the mean total
        density of its tissue matches the reference's.  A paler or darker stain run becomes the
        reference's strength; hues and every ratio inside the tile (nuclei against stroma) are
        kept.  The cheapest method: after the tissue mean, one 256-entry table per tile.
    ``macenko``: Macenko et al. (2009). Per tile, the two stain vectors are the extreme angles
        (1st/99th percentile) of the tissue optical densities in the plane of their two main
        eigenvectors; concentrations are scaled so their 99th percentiles match the
        reference's and recombined with the reference stain matrix.
    ``reinhard``: Reinhard et al. (2001) in CIE L*a*b*: each channel is standardised with
        the tile's tissue mean and standard deviation and rescaled to the reference's.

Tiles the estimate cannot be trusted on are returned unchanged and counted (the reason is
returned too): too little tissue (mostly background, near-white), no colour (grayscale,
near-black), a single stain (almost no haematoxylin or eosin; Macenko), a flat wash (density).
Never NaN, never an exception for a well-formed uint8 RGB tile.

Example::

    reference = fit_reference("macenko", train_images)        # uint8 [N, H, W, 3]
    normalised, fallbacks = reference.normalise_batch(test_images)
    manifest_field = reference.to_dict()                      # JSON-safe
    StainReference.from_dict(manifest_field) == reference     # True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from histoedge.export.manifest import STAIN_KEY

METHODS = ("none", "density", "macenko", "reinhard")
STAIN_FILE = "stain.json"                   # the fitted reference in a training run directory
FORMAT_VERSION = 1

OD_BETA = 0.15            # a pixel is tissue when its optical density exceeds this in some channel
OD_MAX = 3.0              # ... and is below this in every channel (near-black pixels are not stain)
MIN_TISSUE_FRACTION = 0.05
MIN_TISSUE_PIXELS = 100
MIN_CHROMA = 0.08         # median colourfulness of the tissue OD (0 for gray); H&E tissue is ~0.3+
MAX_STAIN_COSINE = 0.97   # two estimated stains closer than ~14 degrees are one stain
MIN_CONCENTRATION = 0.05  # 99th-percentile concentration (OD units) below this: stain absent
ANGLE_PERCENTILE = 1.0
CONCENTRATION_PERCENTILE = 99.0
MIN_LAB_STD = 0.5
# A tile is made at most this many times darker or paler: stain runs differ by tens of percent,
# a larger factor means a tile unlike the training images (or mostly pale mucin, fat, blur).
MAX_DENSITY_SCALE = 2.0
MIN_DENSITY_VARIATION = 0.05   # tissue density's std / mean; real tissue has 0.3 or more
FIT_PIXELS = 2_000_000    # pixels pooled from many images when fitting a reference
ESTIMATE_PIXELS = 8192    # per tile, statistics are estimated on at most this many evenly strided pixels

_GRAY = np.full(3, 1 / np.sqrt(3))
# sRGB (D65) <-> CIE XYZ
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE = _XYZ_FROM_RGB.sum(axis=1)


class StainError(ValueError):
    """A reference that cannot be fitted or a malformed stored reference."""


# --- colour spaces ------------------------------------------------------------------

_OD_TABLE = np.log(256.0 / (np.arange(256, dtype=np.float64) + 1.0))
_LINEAR_TABLE = np.where(np.arange(256) / 255.0 > 0.04045, ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
                         np.arange(256) / 255.0 / 12.92)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> optical density (Beer-Lambert), float64 in [0, log 256]."""
    return _OD_TABLE[rgb]


def rgb_from_od(od: np.ndarray) -> np.ndarray:
    """Optical density -> uint8 RGB (inverse of :func:`optical_density`, rounded and clipped)."""
    return _to_uint8(256.0 * np.exp(-od) - 1.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> CIE L*a*b* (D65), float64."""
    linear = _LINEAR_TABLE[rgb]
    t = linear @ (_XYZ_FROM_RGB.T / _WHITE)
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) -> uint8 RGB, out-of-gamut colours clipped."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    linear = np.clip((t * _WHITE) @ _RGB_FROM_XYZ.T, 0.0, 1.0)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return _to_uint8(c * 255.0)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(values, nan=255.0)), 0, 255).astype(np.uint8)


# --- tissue and stain estimation ----------------------------------------------------------

def _tissue_mask(od: np.ndarray) -> np.ndarray:
    # "some channel", not "every channel": a pale eosin absorbs almost no red light
    peak = np.maximum(np.maximum(od[:, 0], od[:, 1]), od[:, 2])
    return (peak > OD_BETA) & (peak < OD_MAX)


def _subsample(values: np.ndarray) -> np.ndarray:
    return values[:: -(-len(values) // ESTIMATE_PIXELS)]


def _tissue(od: np.ndarray, subsample: bool = True) -> tuple[np.ndarray | None, str | None]:
    """Tissue optical densities [K, 3] of flat pixels ``od`` [P, 3], or (None, why not).

    With ``subsample``, at most ``ESTIMATE_PIXELS`` evenly strided tissue pixels are returned:
    enough for a 3x3 covariance and percentiles, and a bounded cost per tile.
    """
    mask = _tissue_mask(od)
    count = int(mask.sum())
    if count < max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * len(od)):
        return None, "background"
    tissue = _subsample(od[mask]) if subsample else od[mask]
    norms = np.sqrt(np.einsum("ij,ij->i", tissue, tissue))
    gray = tissue @ _GRAY
    colour = np.sqrt(np.maximum(norms ** 2 - gray ** 2, 0.0)) / norms
    if float(np.median(colour)) < MIN_CHROMA:
        return None, "no colour"
    return tissue, None


def _stain_matrix(tissue: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Macenko's stain matrix [2, 3] (rows H, E: unit, non-negative OD vectors), or (None, why)."""
    _values, vectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vectors[:, 1:3]
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)   # point into the positive octant
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, (ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE))
    stains = np.stack([plane @ [np.cos(low), np.sin(low)], plane @ [np.cos(high), np.sin(high)]])
    stains = np.where(np.abs(stains) < 1e-12, 0.0, stains)
    stains *= np.where(stains.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    if np.any(stains < -0.1):
        return None, "not a stain"
    stains = np.clip(stains, 0.0, None)
    stains /= np.maximum(np.linalg.norm(stains, axis=1, keepdims=True), 1e-12)
    if float(stains[0] @ stains[1]) > MAX_STAIN_COSINE:
        return None, "one stain"
    if stains[0, 0] < stains[1, 0]:   # haematoxylin absorbs more red than eosin does
        stains = stains[::-1]
    return stains, None


def _concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations [P, 2] of optical densities [P, 3]."""
    return od @ np.linalg.pinv(stains)


# --- the reference ------------------------------------------------------------------------

@dataclass(frozen=True)
class StainReference:
    """A fitted normalisation target; ``method`` "density", "macenko" or "reinhard".

    Args:
        method: "density", "macenko" or "reinhard".
        mean_density: density: mean total optical density (summed over R, G, B) of reference tissue.
        stain_matrix: Macenko: rows haematoxylin and eosin, unit OD vectors (2 x 3).
        max_concentrations: Macenko: 99th-percentile H and E concentrations of the reference.
        lab_mean, lab_std: Reinhard: L*a*b* mean and standard deviation of reference tissue.
    """

    method: str
    stain_matrix: tuple[tuple[float, float, float], ...] | None = None
    max_concentrations: tuple[float, float] | None = None
    lab_mean: tuple[float, float, float] | None = None
    lab_std: tuple[float, float, float] | None = None
    mean_density: float | None = None

    def __post_init__(self):
        if self.method == "density":
            if not isinstance(self.mean_density, (int, float)) or not 0 < self.mean_density < 3 * OD_MAX:
                raise StainError(f"a density reference needs a mean_density in (0, {3 * OD_MAX}), "
                                 f"got {self.mean_density!r}")
        elif self.method == "macenko":
            matrix = np.asarray(self.stain_matrix, dtype=np.float64)
            maxima = np.asarray(self.max_concentrations, dtype=np.float64)
            if matrix.shape != (2, 3) or maxima.shape != (2,) or not (np.isfinite(matrix).all()
                                                                    and np.isfinite(maxima).all()):
                raise StainError("a Macenko reference needs a finite 2x3 stain_matrix and 2 max_concentrations")
            if np.any(maxima <= 0) or np.any(matrix < 0):
                raise StainError("a Macenko reference needs non-negative stains and positive max_concentrations")
        elif self.method == "reinhard":
            mean = np.asarray(self.lab_mean, dtype=np.float64)
            std = np.asarray(self.lab_std, dtype=np.float64)
            if mean.shape != (3,) or std.shape != (3,) or not (np.isfinite(mean).all() and np.isfinite(std).all()):
                raise StainError("a Reinhard reference needs finite 3-element lab_mean and lab_std")
            if np.any(std <= 0):
                raise StainError("a Reinhard reference needs positive lab_std")
        else:
            raise StainError(f"stain normalisation method must be one of {', '.join(METHODS[1:])}, "
                             f"got {self.method!r}")

    # --- applying ---------------------------------------------------------------------------

    def normalise(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Normalise one uint8 RGB tile [H, W, 3].

        Returns:
            (the normalised tile, None), or (the tile unchanged, the reason) when the tile
            has too little tissue, no colour or a single stain.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise StainError(f"expected a uint8 RGB tile [H, W, 3], got {image.dtype} {image.shape}")
        flat = image.reshape(-1, 3)
        od = optical_density(flat)
        tissue, reason = _tissue(od)
        if tissue is None:
            return image, reason
        if self.method == "density":
            out, reason = self._density(flat, tissue)
        elif self.method == "macenko":
            out, reason = self._macenko(od, tissue)
        else:
            out, reason = self._reinhard(flat, od)
        if out is None:
            return image, reason
        return out.reshape(image.shape), None

    def normalise_batch(self, images: np.ndarray) -> tuple[np.ndarray, int]:
        """Normalise uint8 RGB tiles [N, H, W, 3]; returns (new array, number left unchanged)."""
        out = np.empty_like(images)
        fallbacks = 0
        for i, image in enumerate(images):
            out[i], reason = self.normalise(image)
            fallbacks += reason is not None
        return out, fallbacks

    def _density(self, flat, tissue):
        density = tissue.sum(axis=1)
        if float(density.std()) < MIN_DENSITY_VARIATION * float(density.mean()):
            return None, "flat"   # a uniform wash (mucin, a smear) says nothing of the stain run
        scale = min(max(self.mean_density / float(density.mean()), 1 / MAX_DENSITY_SCALE), MAX_DENSITY_SCALE)
        # one factor for the whole tile, so 256 values cover every pixel: rgb_from_od(od * scale)
        return rgb_from_od(_OD_TABLE * scale)[flat], None

    def _macenko(self, od, tissue):
        stains, reason = _stain_matrix(tissue)
        if stains is None:
            return None, reason
        maxima = np.percentile(_concentrations(tissue, stains), CONCENTRATION_PERCENTILE, axis=0)
        if np.any(maxima < MIN_CONCENTRATION):
            return None, "one stain"
        scale = np.asarray(self.max_concentrations) / maxima
        concentrations = _concentrations(od, stains) * scale
        return rgb_from_od(concentrations @ np.asarray(self.stain_matrix)), None

    def _reinhard(self, flat, od):
        lab = rgb_to_lab(flat)
        sample = _subsample(lab[_tissue_mask(od)])
        mean, std = sample.mean(axis=0), sample.std(axis=0)
        if np.any(std < MIN_LAB_STD):
            return None, "no colour"
        return lab_to_rgb((lab - mean) / std * np.asarray(self.lab_std) + np.asarray(self.lab_mean)), None

    # --- storing ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, stored in ``manifest.json`` and the run's ``stain.json``."""
        data: dict[str, Any] = {"method": self.method, "format": FORMAT_VERSION}
        if self.method == "density":
            data["mean_density"] = float(self.mean_density)
        elif self.method == "macenko":
            data["stain_matrix"] = [list(map(float, row)) for row in self.stain_matrix]
            data["max_concentrations"] = list(map(float, self.max_concentrations))
        else:
            data["lab_mean"] = list(map(float, self.lab_mean))
            data["lab_std"] = list(map(float, self.lab_std))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "StainReference":
        if not isinstance(data, dict):
            raise StainError(f"a stain reference must be a mapping, got {type(data).__name__}")
        if data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise StainError(f"stain reference format {data.get('format')!r} is not {FORMAT_VERSION}")
        method = data.get("method")
        try:
            if method == "density":
                return cls(method, mean_density=float(data["mean_density"]))
            if method == "macenko":
                return cls(method, stain_matrix=tuple(tuple(float(v) for v in row) for row in data["stain_matrix"]),
                           max_concentrations=tuple(float(v) for v in data["max_concentrations"]))
            return cls(method, lab_mean=tuple(float(v) for v in data["lab_mean"]),
                       lab_std=tuple(float(v) for v in data["lab_std"]))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, StainError):
                raise
            raise StainError(f"malformed {method} stain reference: {error!r}") from None


def from_preprocessing(preprocessing: dict[str, Any] | None) -> StainReference | None:
    """The reference stored in a manifest's ``preprocessing`` mapping, or None when there is none."""
    data = (preprocessing or {}).get(STAIN_KEY)
    if data is None or (isinstance(data, dict) and data.get("method") == "none"):
        return None
    return StainReference.from_dict(data)


def load_run_reference(run_dir) -> StainReference | None:
    """The reference a training run stored in ``RUN/stain.json``, or None when it used none."""
    import json
    from pathlib import Path

    path = Path(run_dir) / STAIN_FILE
    if not path.is_file():
        return None
    try:
        return StainReference.from_dict(json.loads(path.read_text()))
    except ValueError as error:  # JSONDecodeError and StainError
        raise StainError(f"{path}: {error}") from None


def fit_reference(method: str, images: np.ndarray) -> StainReference:
    """Fit a ``method`` reference on uint8 RGB images [N, H, W, 3] (or one [H, W, 3]).

    Tissue pixels of all images are pooled (at most ``FIT_PIXELS``, evenly strided, so the fit
    is deterministic).

    Raises:
        StainError: unknown method, or the images hold too little coloured tissue.
    """
    if method not in METHODS[1:]:
        raise StainError(f"stain normalisation method must be one of {', '.join(METHODS[1:])}, got {method!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3 or images.ndim not in (3, 4):
        raise StainError(f"expected uint8 RGB images [N, H, W, 3], got {images.dtype} {images.shape}")
    flat = images.reshape(-1, 3)
    flat = flat[:: max(1, len(flat) // FIT_PIXELS)]
    od = optical_density(flat)
    tissue, reason = _tissue(od, subsample=False)
    if tissue is None:
        raise StainError(f"cannot fit a {method} reference: the images hold {reason} "
                         "(too little stained tissue); name another reference image")
    if method == "density":
        return StainReference("density", mean_density=float(tissue.sum(axis=1).mean()))
    if method == "reinhard":
        lab = rgb_to_lab(flat[_tissue_mask(od)])
        return StainReference("reinhard", lab_mean=tuple(lab.mean(axis=0).tolist()),
                              lab_std=tuple(np.maximum(lab.std(axis=0), MIN_LAB_STD).tolist()))
    stains, reason = _stain_matrix(tissue)
    if stains is None:
        raise StainError(f"cannot fit a Macenko reference: the images show {reason}")
    maxima = np.percentile(_concentrations(tissue, stains), CONCENTRATION_PERCENTILE, axis=0)
    if np.any(maxima < MIN_CONCENTRATION):
        raise StainError("cannot fit a Macenko reference: the images show one stain")
    return StainReference("macenko", stain_matrix=tuple(tuple(row) for row in stains.tolist()),
                          max_concentrations=tuple(maxima.tolist()))
