"""Decision thresholds on P(positive) chosen on validation predictions, by rule name.

* ``validation_point``: the highest threshold whose validation sensitivity reaches the target.
  On new patients it misses the target about half the time, and more with few validation patients.
* ``patient_lower_bound`` (default): the highest threshold whose patient-bootstrap lower bound of
  validation sensitivity (one-sided, level ``confidence``) reaches the target.  Resampling patients
  (:mod:`histoedge.training.bootstrap`) makes the margin grow as validation patients get fewer or
  differ more from each other; with one image per patient it is an image bootstrap.

Example::

    choice = select_threshold("patient_lower_bound", y_val, p_val[:, 1], patients=val_patients,
                              target=0.95, confidence=0.9)
    choice["threshold"], choice["val_sensitivity_lower_bound"]
"""

from __future__ import annotations

import math

import numpy as np

from histoedge.training.bootstrap import cluster_draws, cluster_ids
from histoedge.training.errors import EnsembleError

RULES = ("patient_lower_bound", "validation_point")


def _positives(y_true, positive_probs, positive_class: int):
    y_true = np.asarray(y_true)
    scores = np.asarray(positive_probs, dtype=np.float64)
    positive = y_true == positive_class
    if not positive.any():
        raise EnsembleError("cannot choose a threshold: the validation split has no positive images")
    return positive, scores


def point_threshold(y_true, positive_probs, target: float, positive_class: int = 1) -> float:
    """Highest t with sensitivity(P(positive) >= t) >= target on the given rows."""
    positive, scores = _positives(y_true, positive_probs, positive_class)
    ranked = np.sort(scores[positive])[::-1]
    # The k-th highest positive score keeps exactly k positives at or above it.
    needed = max(1, math.ceil(target * ranked.size - 1e-9))
    return float(ranked[min(needed, ranked.size) - 1])


def sensitivity_lower_bounds(y_true, positive_probs, clusters, *, confidence: float = 0.9, rounds: int = 1000,
                             seed: int = 0, positive_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate thresholds, descending; lower bound of sensitivity at each)``.

    Candidates are the distinct positive scores.  For every cluster resample the sensitivity at
    every candidate is computed at once from per-cluster hit counts, so this costs one matrix
    product per call.
    """
    positive, scores = _positives(y_true, positive_probs, positive_class)
    clusters = np.asarray(clusters, dtype=np.int64)
    candidates = np.unique(scores[positive])[::-1]
    n_clusters = int(clusters.max()) + 1
    # hits[g, j]: positives of cluster g with score >= candidates[j]
    first = np.searchsorted(-candidates, -scores[positive])  # index of each positive's own score
    hits = np.zeros((n_clusters, candidates.size))
    np.add.at(hits, (clusters[positive], first), 1.0)
    hits = np.cumsum(hits, axis=1)
    counts = np.stack([np.bincount(row, minlength=n_clusters) for row in cluster_draws(n_clusters, rounds, seed)])
    totals = counts @ hits[:, -1]
    keep = totals > 0
    sensitivity = (counts[keep] @ hits) / totals[keep, None]
    return candidates, np.percentile(sensitivity, 100 * (1 - confidence), axis=0)


def select_threshold(rule: str, y_true, positive_probs, *, target: float, patients=None, confidence: float = 0.9,
                     rounds: int = 1000, seed: int = 0, positive_class: int = 1) -> dict:
    """Choose a threshold by rule name; returns what was chosen and why (JSON-ready).

    Args:
        rule: one of :data:`RULES`.
        y_true: validation labels [N].
        positive_probs: validation P(positive) [N].
        target: sensitivity target in (0, 1).
        patients: patient id per row (None entries, or None for all: each row its own patient).
        confidence: one-sided level of the lower bound (``patient_lower_bound``).
        rounds: bootstrap resamples (``patient_lower_bound``).

    Returns:
        ``{"rule", "threshold", "target", "confidence", "val_sensitivity", "val_sensitivity_lower_bound",
        "val_patients"}`` (the last three where they apply).
    """
    if rule not in RULES:
        raise EnsembleError(f"unknown threshold rule {rule!r}; expected one of {', '.join(RULES)}")
    y_true = np.asarray(y_true)
    scores = np.asarray(positive_probs, dtype=np.float64)
    clusters = cluster_ids(patients, len(y_true))
    result = {"rule": rule, "target": float(target)}
    if rule == "validation_point":
        threshold = point_threshold(y_true, scores, target, positive_class)
    else:
        candidates, lower = sensitivity_lower_bounds(y_true, scores, clusters, confidence=confidence,
                                                     rounds=rounds, seed=seed, positive_class=positive_class)
        # Sensitivity only grows as the threshold falls, and the lowest candidate keeps every positive.
        j = int(np.argmax(lower >= target - 1e-12))
        threshold = float(candidates[j])
        result.update(confidence=float(confidence), val_sensitivity_lower_bound=float(lower[j]), rounds=int(rounds))
    positive = y_true == positive_class
    result["threshold"] = threshold
    result["val_sensitivity"] = float(np.mean(scores[positive] >= threshold))
    result["val_patients"] = int(len(np.unique(clusters[positive])))
    return result
