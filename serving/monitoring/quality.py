"""Quality checks of decoded images against the reference profile, and abstention.

Example::

    assessment = assess(images, profile, aspect_ratios)
    assessment.failed[0]                    # e.g. ("out_of_focus",)
    reasons = abstentions(assessment, probabilities, band, positive_class)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from histoedge.serving.monitoring.features import FEATURES, image_features
from histoedge.serving.monitoring.profile import STAIN_FEATURES, ReferenceProfile

INDETERMINATE = "indeterminate"
COLUMNS = FEATURES + ("stain_distance", "aspect_ratio")
_STAIN_COLUMNS = [FEATURES.index(name) for name in STAIN_FEATURES]
_STAIN_DISTANCE, _ASPECT = COLUMNS.index("stain_distance"), COLUMNS.index("aspect_ratio")


@dataclass
class Assessment:
    """Features (``COLUMNS`` order; NaN where unknown) and failed checks of each image."""

    values: np.ndarray
    failed: list[tuple[str, ...]]
    any_failed: bool = False

    def column(self, name: str) -> np.ndarray:
        return self.values[:, COLUMNS.index(name)]


def assess(images: np.ndarray, profile: ReferenceProfile | None,
           aspect_ratios: np.ndarray | None = None) -> Assessment:
    """Compute the features of ``images`` and run the profile's checks (none without a profile)."""
    features = image_features(images)
    n = len(features)
    values = np.full((n, len(COLUMNS)), np.nan)
    values[:, :len(FEATURES)] = features
    if aspect_ratios is not None:
        values[:, _ASPECT] = aspect_ratios
    if profile is None:
        return Assessment(values, [()] * n)
    values[:, _STAIN_DISTANCE] = profile.stain.distance(features[:, _STAIN_COLUMNS])
    columns, low, high, reasons = _limits(profile)
    checked = values[:, columns]
    failing = (checked < low) | (checked > high)  # NaN (unknown) compares False: never fails
    if not failing.any():
        return Assessment(values, [()] * n)
    failed = [tuple(dict.fromkeys(r for r, bad in zip(reasons, row) if bad)) for row in failing]
    return Assessment(values, failed, any_failed=True)


_LIMITS: dict[int, tuple] = {}


def _limits(profile: ReferenceProfile):
    """The profile's checks as arrays (column index, lower and upper limit, reason), built once."""
    cached = _LIMITS.get(id(profile))
    if cached is None or cached[0] is not profile:
        if len(_LIMITS) > 64:
            _LIMITS.clear()
        checks = [c for c in profile.checks if c.feature in COLUMNS]
        cached = _LIMITS[id(profile)] = (profile, (
            np.array([COLUMNS.index(c.feature) for c in checks], dtype=np.intp),
            np.array([-np.inf if c.low is None else c.low for c in checks]),
            np.array([np.inf if c.high is None else c.high for c in checks]),
            tuple(c.reason for c in checks)))
    return cached[1]


def uncertain(probabilities: np.ndarray, band: tuple[float, float] | None,
              positive_class: int | None) -> np.ndarray:
    """True where the ensemble's probability lies inside the uncertainty band (see the manifest)."""
    probabilities = np.asarray(probabilities)
    if band is None:
        return np.zeros(len(probabilities), dtype=bool)
    low, high = band
    if positive_class is not None and probabilities.shape[1] == 2:
        value = probabilities[:, positive_class]
    else:
        value = probabilities.max(axis=1)
    return (value >= low) & (value <= high)


def abstentions(assessment: Assessment, in_band: np.ndarray) -> list[str | None]:
    """Why each image is ``indeterminate``: ``"quality"``, ``"uncertain"`` or None."""
    return ["quality" if failed else "uncertain" if band else None
            for failed, band in zip(assessment.failed, in_band)]


def quality_json(assessment: Assessment, index: int, abstained: str | None) -> bytes:
    """One image's ``quality`` output: its features, failed checks and abstention reason."""
    features = {name: round(float(v), 6) for name, v in zip(COLUMNS, assessment.values[index])
                if np.isfinite(v)}
    return json.dumps({"features": features, "failed": list(assessment.failed[index]),
                       "abstained": abstained}, sort_keys=True).encode("utf-8")
