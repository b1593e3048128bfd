"""The reference profile: what a model version was trained for, written at export.

``histoedge export`` writes ``profile.json`` beside ``manifest.json`` (the manifest names it
and holds its SHA-256).  It holds, from the training and validation images, the
distribution of every feature of :mod:`.features` (decile bins for the population stability
index, a few quantiles for people), the distribution of the ensemble's predictions on the
validation images, and the quality checks with their thresholds.  The server reads it with
:func:`load_profile` and never recomputes a threshold.

Threshold rules (:func:`build_profile`), chosen so that reference images almost never fail:

* ``out_of_focus``: focus below half the reference's 1st percentile;
* ``background``: tissue fraction below half the reference's 1st percentile;
* ``stain``: Mahalanobis distance of (``od_hematoxylin``, ``od_eosin``) from the reference
  mean above 1.25 x the reference's 99th percentile of that distance;
* ``size_ratio``: width/height of the encoded image outside the reference range widened by
  a factor 1.25 (checked only for ``image_bytes`` input).

Example::

    profile = build_profile(features, probabilities, positive_class=1, aspect_ratios=ratios)
    Path("profile.json").write_text(profile.to_json())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histoedge.serving.monitoring.features import FEATURES

PROFILE_FILE = "profile.json"
SCHEMA = 1
BINS = 10
PREDICTIONS = ("positive_probability", "confidence")
QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)
STAIN_FEATURES = ("od_hematoxylin", "od_eosin")
REASONS = ("out_of_focus", "background", "stain", "size_ratio")
_LOW_MARGIN, _STAIN_MARGIN, _RATIO_MARGIN = 0.5, 1.25, 1.25


class ProfileError(ValueError):
    """A profile file that is missing, altered or malformed."""


@dataclass(frozen=True)
class Distribution:
    """A reference distribution: inner bin edges, the reference share per bin, quantiles.

    Edges are the reference's deciles (ties merged), so every bin holds about a tenth of
    the reference and the population stability index weighs each part of the range alike.
    """

    edges: tuple[float, ...]
    fractions: tuple[float, ...]
    quantiles: dict[str, float]

    @classmethod
    def from_values(cls, values: np.ndarray) -> "Distribution":
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            raise ProfileError("a reference distribution needs at least one finite value")
        edges = np.unique(np.quantile(values, np.arange(1, BINS) / BINS))
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        return cls(edges=tuple(float(e) for e in edges),
                   fractions=tuple(float(c) for c in counts / counts.sum()),
                   quantiles={f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES})

    def bins(self, values: np.ndarray) -> np.ndarray:
        """The bin index of each value (0 .. len(fractions) - 1)."""
        return np.searchsorted(np.asarray(self.edges), values, side="right")

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "fractions": list(self.fractions), "quantiles": self.quantiles}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Distribution":
        edges, fractions = tuple(map(float, data["edges"])), tuple(map(float, data["fractions"]))
        if len(fractions) != len(edges) + 1 or list(edges) != sorted(edges):
            raise ProfileError("a distribution needs sorted edges and one more fraction than edges")
        return cls(edges, fractions, {str(k): float(v) for k, v in data.get("quantiles", {}).items()})


@dataclass(frozen=True)
class Check:
    """One quality check: ``reason`` fails when ``feature`` is below ``low`` or above ``high``."""

    reason: str
    feature: str
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "feature": self.feature, "min": self.low, "max": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Check":
        low, high = data.get("min"), data.get("max")
        return cls(str(data["reason"]), str(data["feature"]),
                   None if low is None else float(low), None if high is None else float(high))


@dataclass(frozen=True)
class StainReference:
    """Mean and inverse covariance of (od_hematoxylin, od_eosin) in the reference."""

    mean: tuple[float, float]
    inverse_covariance: tuple[tuple[float, float], tuple[float, float]]

    def distance(self, stains: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of rows [N, 2] from the reference mean."""
        stains = np.asarray(stains, dtype=np.float64)
        x, y = stains[:, 0] - self.mean[0], stains[:, 1] - self.mean[1]
        (a, b), (_, c) = self.inverse_covariance
        return np.sqrt(np.maximum(a * x * x + 2 * b * x * y + c * y * y, 0.0))  # no einsum: cheap per request

    @classmethod
    def fit(cls, stains: np.ndarray) -> "StainReference":
        covariance = np.atleast_2d(np.cov(stains.T)) + 1e-6 * np.eye(2)  # never singular
        inverse = np.linalg.inv(covariance)
        return cls(tuple(float(v) for v in stains.mean(axis=0)),
                   tuple(tuple(float(v) for v in row) for row in inverse))


@dataclass(frozen=True)
class ReferenceProfile:
    """Feature and prediction distributions of the reference images, and the quality checks.

    Args:
        features: distribution of each image feature (training and validation images).
        predictions: distribution of ``positive_probability`` (binary models) and
            ``confidence`` (top probability) on the validation images.
        checks: quality checks with thresholds.
        stain: reference for the ``stain_distance`` feature.
        images: how many images each part came from.
    """

    features: dict[str, Distribution]
    predictions: dict[str, Distribution]
    checks: tuple[Check, ...]
    stain: StainReference
    images: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "images": self.images,
                "features": {k: v.to_dict() for k, v in self.features.items()},
                "predictions": {k: v.to_dict() for k, v in self.predictions.items()},
                "checks": [c.to_dict() for c in self.checks],
                "stain": {"features": list(STAIN_FEATURES), "mean": list(self.stain.mean),
                          "inverse_covariance": [list(r) for r in self.stain.inverse_covariance]}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReferenceProfile":
        try:
            if int(data.get("schema", 0)) != SCHEMA:
                raise ProfileError(f"profile schema {data.get('schema')} is not {SCHEMA}")
            stain = data["stain"]
            return cls(
                features={str(k): Distribution.from_dict(v) for k, v in data["features"].items()},
                predictions={str(k): Distribution.from_dict(v) for k, v in data.get("predictions", {}).items()},
                checks=tuple(Check.from_dict(c) for c in data.get("checks", [])),
                stain=StainReference(tuple(map(float, stain["mean"])),
                                     tuple(tuple(map(float, r)) for r in stain["inverse_covariance"])),
                images={str(k): int(v) for k, v in data.get("images", {}).items()})
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ProfileError):
                raise
            raise ProfileError(f"malformed profile: {error!r}") from error


def prediction_values(probabilities: np.ndarray, positive_class: int | None) -> dict[str, np.ndarray]:
    """``confidence`` (top probability) and, for binary models, ``positive_probability``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    values = {"confidence": probabilities.max(axis=1)}
    if positive_class is not None:
        values["positive_probability"] = probabilities[:, positive_class]
    return values


def build_profile(features: np.ndarray, probabilities: np.ndarray | None, positive_class: int | None,
                  aspect_ratios: np.ndarray | None = None) -> ReferenceProfile:
    """The profile of reference images.

    Args:
        features: :func:`.features.image_features` of the training and validation images.
        probabilities: the exported model's probabilities [N, C] on validation images, or None.
        positive_class: column of the positive class for binary models, else None.
        aspect_ratios: width/height of the original image files, or None.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(FEATURES) or len(features) < 2:
        raise ProfileError(f"need features of at least 2 images, got shape {list(features.shape)}")
    column = {name: features[:, i] for i, name in enumerate(FEATURES)}
    stain = StainReference.fit(np.column_stack([column[n] for n in STAIN_FEATURES]))
    distances = stain.distance(np.column_stack([column[n] for n in STAIN_FEATURES]))
    column["stain_distance"] = distances
    checks = [
        Check("out_of_focus", "focus", low=_LOW_MARGIN * float(np.quantile(column["focus"], 0.01))),
        Check("background", "tissue_fraction",
              low=_LOW_MARGIN * float(np.quantile(column["tissue_fraction"], 0.01))),
        Check("stain", "stain_distance", high=_STAIN_MARGIN * float(np.quantile(distances, 0.99))),
    ]
    counts = {"features": int(len(features))}
    if aspect_ratios is not None and len(aspect_ratios):
        ratios = np.asarray(aspect_ratios, dtype=np.float64)
        checks.append(Check("size_ratio", "aspect_ratio", low=float(ratios.min()) / _RATIO_MARGIN,
                            high=float(ratios.max()) * _RATIO_MARGIN))
    predictions = {}
    if probabilities is not None and len(probabilities):
        predictions = {k: Distribution.from_values(v)
                       for k, v in prediction_values(probabilities, positive_class).items()}
        counts["predictions"] = int(len(probabilities))
    return ReferenceProfile(
        features={name: Distribution.from_values(values) for name, values in column.items()},
        predictions=predictions, checks=tuple(checks), stain=stain, images=counts)


def uncertainty_band(probabilities: np.ndarray, threshold: float | None, positive_class: int | None,
                     fraction: float) -> tuple[float, float] | None:
    """The band of least certain predictions: it holds ``fraction`` of the validation images.

    Binary models: P(positive) within the band centred on the threshold.  Other models:
    top probability from 0 up to the ``fraction`` quantile.  None without images.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0 or fraction <= 0:
        return None
    if positive_class is not None and threshold is not None:
        width = float(np.quantile(np.abs(probabilities[:, positive_class] - threshold), fraction))
        return max(0.0, threshold - width), min(1.0, threshold + width)
    return 0.0, float(np.quantile(probabilities.max(axis=1), fraction))


def file_reference(path: Path) -> dict[str, str]:
    """What the manifest records about the profile file: its name and SHA-256."""
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def load_profile(version_dir: Path, reference: dict[str, str] | None) -> ReferenceProfile | None:
    """Read and check the profile the manifest names (None when it names none)."""
    if not reference:
        return None
    name = str(reference.get("file", PROFILE_FILE))
    if "/" in name or "\\" in name or name.startswith("."):
        raise ProfileError(f"manifest names an invalid profile file {name!r}")
    path = Path(version_dir) / name
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ProfileError(f"cannot read {path}: {error.strerror or error}") from error
    if hashlib.sha256(data).hexdigest() != reference.get("sha256"):
        raise ProfileError(f"{path} does not match the SHA-256 in its manifest")
    try:
        return ReferenceProfile.from_dict(json.loads(data))
    except json.JSONDecodeError as error:
        raise ProfileError(f"{path} is not valid JSON: {error}") from error
