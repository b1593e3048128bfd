"""Decision thresholds on P(positive) chosen on validation predictions, by rule name.

* ``validation_point``: the highest threshold whose validation sensitivity reaches the target.
  On new patients it misses the target about half the time, and more with few validation patients.
* ``patient_lower_bound`` (default): the highest threshold whose patient-bootstrap lower bound of
  validation sensitivity (one-sided, level ``confidence``) reaches the target.  Resampling patients
  (:mod:`histoedge.training.bootstrap`) makes the margin grow as validation patients get fewer or
  differ more from each other; with one image per patient it is an image bootstrap.
* ``split_lower_bound``: the highest threshold at which a ``confidence`` share of small cohorts
  (``split_patients`` positive patients drawn from the given ones) reach the target.  The default
  rule bounds the *mean* sensitivity over many patients; a test split or a local acceptance
  cohort holds only a handful of positive patients, and its sensitivity spreads around that mean.
  This rule bounds one such cohort instead, at a cost in specificity
  (``bench/results/evaluation.md``, "the spread of a small split").

Whatever the rule, the result also says how often such a cohort falls below the target at the
chosen threshold (``cohort_below_target``), so the default rule's promise about the mean is read
next to what one acceptance cohort should expect.

A threshold chosen on cross-fitted out-of-fold scores is applied to other models, the deployed
members; :func:`transfer_check` compares the two on rows both scored, and :func:`matched_threshold`
gives the deployed members' threshold that flags as many of those rows (``ensemble.threshold_transfer``).

Example::

    choice = select_threshold("patient_lower_bound", y_val, p_val[:, 1], patients=val_patients,
                              target=0.95, confidence=0.9)
    choice["threshold"], choice["val_sensitivity_lower_bound"]
"""

from __future__ import annotations

import math

import numpy as np

from histoedge.training.bootstrap import cluster_draws, cluster_ids
from histoedge.training.config import THRESHOLD_RULES
from histoedge.training.errors import EnsembleError

RULES = THRESHOLD_RULES


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
    n_clusters = int(clusters.max()) + 1
    candidates, hits = _hits(scores[positive], clusters[positive], n_clusters)
    counts = np.stack([np.bincount(row, minlength=n_clusters) for row in cluster_draws(n_clusters, rounds, seed)])
    totals = counts @ hits[:, -1]
    keep = totals > 0
    sensitivity = (counts[keep] @ hits) / totals[keep, None]
    return candidates, np.percentile(sensitivity, 100 * (1 - confidence), axis=0)


def split_lower_bounds(y_true, positive_probs, clusters, *, split_patients: int, confidence: float = 0.9,
                       rounds: int = 1000, seed: int = 0, positive_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate thresholds, descending; lower bound of one cohort's sensitivity at each)``.

    A cohort is ``split_patients`` positive patients drawn with replacement from the positive
    patients given; its sensitivity counts images, as a test split's does.
    """
    scores, owners = _positive_patients(y_true, positive_probs, clusters, positive_class)
    candidates, hits = _hits(scores, owners, int(owners.max()) + 1)
    sensitivity = cohort_sensitivities(hits, hits[:, -1], split_patients=split_patients, rounds=rounds, seed=seed)
    return candidates, np.percentile(sensitivity, 100 * (1 - confidence), axis=0)


def cohort_sensitivities(hits, sizes, *, split_patients: int, rounds: int = 1000, seed: int = 0) -> np.ndarray:
    """Image-level sensitivity of ``rounds`` cohorts of ``split_patients`` patients drawn with replacement.

    Args:
        hits: per patient, positives found [P], or [P, T] at T thresholds at once.
        sizes: positives per patient [P].
        split_patients: patients per cohort.
        rounds: cohorts drawn; the same ``seed`` draws the same cohorts for any ``hits``.

    Returns:
        ``[rounds]`` (or ``[rounds, T]``) sensitivities, images (not patients) averaged.

    Example::

        cohort_sensitivities(np.array([1, 0]), np.array([1, 3]), split_patients=2)  # 0, 1/4 or 1 each
    """
    counts = _cohort_counts(len(sizes), split_patients, rounds, seed)
    hits = np.asarray(hits, dtype=np.float64)
    totals = counts @ np.asarray(sizes, dtype=np.float64)
    return (counts @ hits) / (totals[:, None] if hits.ndim == 2 else totals)


def cohort_shortfall(y_true, positive_probs, clusters, *, threshold: float, target: float, split_patients: int,
                     rounds: int = 1000, seed: int = 0, positive_class: int = 1) -> float:
    """Share of cohorts whose sensitivity at ``threshold`` falls below ``target``.

    Cohorts are drawn by :func:`cohort_sensitivities`, as in :func:`split_lower_bounds` (the same draws
    for the same seed), so a reader of any rule's threshold sees how often a local acceptance cohort
    of that size would miss.

    Example::

        cohort_shortfall(y_val, p_val[:, 1], cluster_ids(val_patients), threshold=0.31, target=0.95,
                         split_patients=9)   # e.g. 0.24: about one cohort in four misses
    """
    scores, owners = _positive_patients(y_true, positive_probs, clusters, positive_class)
    found = np.bincount(owners, weights=(scores >= threshold).astype(np.float64))
    sensitivity = cohort_sensitivities(found, np.bincount(owners), split_patients=split_patients, rounds=rounds,
                                       seed=seed)
    return float(np.mean(sensitivity < target - 1e-12))


def _positive_patients(y_true, positive_probs, clusters, positive_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The positive rows' scores and their patients, numbered in order of first appearance."""
    positive, scores = _positives(y_true, positive_probs, positive_class)
    owners = cluster_ids([int(c) for c in np.asarray(clusters, dtype=np.int64)[positive]])
    return scores[positive], owners


def _cohort_counts(n_patients: int, split_patients: int, rounds: int, seed: int) -> np.ndarray:
    """counts[r, g]: how often patient g is drawn into cohort r (``split_patients`` draws each)."""
    if split_patients < 1:
        raise EnsembleError(f"a cohort needs at least one positive patient, got {split_patients}")
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_patients, int(split_patients)), minlength=n_patients)
                     for _ in range(int(rounds))])


def _hits(positive_scores: np.ndarray, owners: np.ndarray, n_owners: int) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, hits)``: the distinct positive scores, descending, and hits[g, j], the
    positives of cluster g scoring at least candidates[j]."""
    candidates = np.unique(positive_scores)[::-1]
    first = np.searchsorted(-candidates, -positive_scores)  # index of each positive's own score
    hits = np.zeros((n_owners, candidates.size))
    np.add.at(hits, (owners, first), 1.0)
    return candidates, np.cumsum(hits, axis=1)


def select_threshold(rule: str, y_true, positive_probs, *, target: float, patients=None, confidence: float = 0.9,
                     rounds: int = 1000, seed: int = 0, positive_class: int = 1,
                     split_patients: int | None = None) -> dict:
    """Choose a threshold by rule name; returns what was chosen and why (JSON-ready).

    Args:
        rule: one of :data:`RULES`.
        y_true: validation labels [N].
        positive_probs: validation P(positive) [N].
        target: sensitivity target in (0, 1).
        patients: patient id per row (None entries, or None for all: each row its own patient).
        confidence: one-sided level of the lower bound (``patient_lower_bound``, ``split_lower_bound``).
        rounds: resamples (the two bound rules) and cohorts drawn (``cohort_below_target``).
        split_patients: positive patients per cohort (``split_lower_bound``, and the cohorts of
            ``cohort_below_target`` for every rule); None: as many as there are positive patients
            in the rows given.

    Returns:
        ``{"rule", "threshold", "target", "confidence", "val_sensitivity", "val_sensitivity_lower_bound",
        "val_patients", "split_patients", "cohort_patients", "cohort_below_target"}`` (those that
        apply; the last: the share of cohorts below the target at the chosen threshold).
    """
    if rule not in RULES:
        raise EnsembleError(f"unknown threshold rule {rule!r}; expected one of {', '.join(RULES)}")
    y_true = np.asarray(y_true)
    scores = np.asarray(positive_probs, dtype=np.float64)
    clusters = cluster_ids(patients, len(y_true))
    result = {"rule": rule, "target": float(target)}
    if split_patients is None:
        split_patients = len(np.unique(clusters[y_true == positive_class]))
    if rule == "validation_point":
        threshold = point_threshold(y_true, scores, target, positive_class)
    else:
        if rule == "split_lower_bound":
            candidates, lower = split_lower_bounds(y_true, scores, clusters, split_patients=split_patients,
                                                   confidence=confidence, rounds=rounds, seed=seed,
                                                   positive_class=positive_class)
            result["split_patients"] = int(split_patients)
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
    result["cohort_patients"] = int(split_patients)
    result["cohort_below_target"] = cohort_shortfall(y_true, scores, clusters, threshold=threshold, target=target,
                                                     split_patients=split_patients, rounds=rounds, seed=seed,
                                                     positive_class=positive_class)
    return result


def transfer_check(y_true, fold_scores, deployed_scores, *, threshold: float, positive_class: int = 1) -> dict:
    """Sensitivity and specificity at ``threshold`` of the same rows scored two ways.

    A cross-fitted threshold is chosen on the fold models' out-of-fold scores but applied to the
    deployed members, which trained on more data and score differently.  The validation rows are
    scored by both (out of fold, and by the deployed members, which used them only to stop early),
    so comparing the two on those rows shows how far the threshold's meaning moves between them.

    Args:
        y_true: labels of the rows [N].
        fold_scores: the fold models' (out-of-fold) P(positive) of the rows [N].
        deployed_scores: the deployed models' P(positive) of the same rows [N].
        threshold: the chosen threshold.

    Returns:
        ``{"images", "out_of_fold": {"sensitivity", "specificity"}, "deployed": {...}, "matched":
        {"threshold", "flagged_share", "deployed": {...}}}``: the last, the deployed members at
        :func:`matched_threshold`; a figure is None when the rows hold no image of its class.

    Example::

        transfer_check(y_val, oof_val[:, 1], p_val[:, 1], threshold=0.39)["deployed"]["sensitivity"]
    """
    y_true = np.asarray(y_true)
    positive = y_true == positive_class

    def rates(scores, at: float) -> dict:
        called = np.asarray(scores, dtype=np.float64) >= at
        if called.shape != y_true.shape:
            raise EnsembleError(f"expected {y_true.size} scores, got {called.size}")
        return {"sensitivity": float(called[positive].mean()) if positive.any() else None,
                "specificity": float((~called[~positive]).mean()) if (~positive).any() else None}

    result = {"images": int(y_true.size), "out_of_fold": rates(fold_scores, threshold),
              "deployed": rates(deployed_scores, threshold)}
    matched = matched_threshold(fold_scores, deployed_scores, threshold=threshold)
    return {**result, "matched": {**matched, "deployed": rates(deployed_scores, matched["threshold"])}}


def matched_threshold(fold_scores, deployed_scores, *, threshold: float) -> dict:
    """The threshold at which the deployed scores flag as large a share of the rows as the fold scores.

    With ``f`` the share of rows whose fold score is >= ``threshold``, the result is the
    ``ceil(f n)``-th highest deployed score: the highest threshold flagging at least that share.
    No label is used.  If the deployed models ranked the rows exactly as the fold models did and
    only their scale differed, it would flag the same rows, so the threshold's sensitivity and
    specificity carry over; where they rank differently, the share flagged is what carries over.

    Args:
        fold_scores: the fold models' (out-of-fold) P(positive) of the rows [N].
        deployed_scores: the deployed models' P(positive) of the same rows [N].
        threshold: the threshold chosen on the fold scores.

    Returns:
        ``{"threshold", "flagged_share"}``; when no row is flagged, a threshold just above the
        highest deployed score.

    Example::

        matched_threshold([0.2, 0.6, 0.9], [0.1, 0.3, 0.8], threshold=0.5)  # {"threshold": 0.3, ...}
    """
    fold = np.asarray(fold_scores, dtype=np.float64)
    deployed = np.asarray(deployed_scores, dtype=np.float64)
    if fold.shape != deployed.shape or fold.ndim != 1 or fold.size == 0:
        raise EnsembleError(f"expected the same non-empty rows scored twice, got {fold.shape} and {deployed.shape}")
    flagged = int(np.count_nonzero(fold >= threshold))
    ranked = np.sort(deployed)[::-1]
    matched = float(np.nextafter(ranked[0], np.inf)) if flagged == 0 else float(ranked[flagged - 1])
    return {"threshold": matched, "flagged_share": flagged / fold.size}
