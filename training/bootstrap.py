"""Cluster (patient) bootstrap: resample whole patients, not images.

Images of one patient are alike, so resampling images treats them as independent evidence and
gives intervals that are far too narrow.  A cluster bootstrap draws patients with replacement and
takes every image of each drawn patient (Field & Welsh 2007); images without a patient id are
their own cluster, which makes it the ordinary image bootstrap when no ids are known.

Example::

    clusters = cluster_ids(patients)                # "p1", "p1", None, "p2" -> [0, 0, 2, 1]
    for drawn, index in cluster_resamples(clusters, rounds=1000, seed=0):
        metric(y[index], p[index])
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np


def cluster_ids(patients: Sequence | None, n: int | None = None) -> np.ndarray:
    """Integer cluster per image [N]: one per patient id; each image without an id (None or "") alone.

    Args:
        patients: patient id per image, or None (every image its own cluster; then pass ``n``).
        n: number of images when ``patients`` is None.
    """
    if patients is None:
        return np.arange(int(n or 0), dtype=np.int64)
    ids: dict = {}
    out = np.empty(len(patients), dtype=np.int64)
    for i, patient in enumerate(patients):
        key = str(patient) if patient not in (None, "") else i  # an int key never equals a str id
        out[i] = ids.setdefault(key, len(ids))
    return out


def cluster_draws(n_clusters: int, rounds: int, seed: int = 0) -> np.ndarray:
    """Cluster indices drawn with replacement: [rounds, n_clusters], one row per resample."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_clusters, (int(rounds), int(n_clusters)))


def cluster_resamples(clusters: np.ndarray, rounds: int, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(drawn clusters [G], image indices)`` for ``rounds`` cluster-bootstrap resamples.

    Every image of a drawn cluster is taken, as often as the cluster was drawn.  With one image
    per cluster (``clusters == arange(N)``) this is exactly the image bootstrap.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    members = [np.flatnonzero(clusters == c) for c in range(n_clusters)]
    singletons = all(len(m) == 1 for m in members)
    order = np.concatenate(members) if singletons and members else None
    for drawn in cluster_draws(n_clusters, rounds, seed):
        index = order[drawn] if order is not None else np.concatenate([members[c] for c in drawn])
        yield drawn, index


def percentile_interval(values, level: float = 0.95) -> list[float] | None:
    """Two-sided percentile interval of the finite values, or None if there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    alpha = (1 - level) / 2 * 100
    return [float(np.percentile(values, alpha)), float(np.percentile(values, 100 - alpha))]


def paired_difference(metric: Callable[[np.ndarray, np.ndarray], float], y_true, probs_a, probs_b, clusters, *,
                      rounds: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """``metric(a) - metric(b)`` on the same rows, with a paired cluster-bootstrap interval.

    Both models are scored on the same resampled patients in every round, so what the two share
    (which patients are hard) cancels out of the difference.

    Returns:
        ``{"difference", "ci", "p", "a_better", "b_better", "rounds"}``; ``a_better`` (``b_better``)
        is True when the whole interval is above (below) 0; ``p`` is the two-sided bootstrap
        p-value of no difference (:func:`bootstrap_p`), None without resamples.
    """
    y_true = np.asarray(y_true)
    probs_a, probs_b = np.asarray(probs_a, np.float64), np.asarray(probs_b, np.float64)
    point = metric(y_true, probs_a) - metric(y_true, probs_b)
    diffs = [metric(y_true[i], probs_a[i]) - metric(y_true[i], probs_b[i])
             for _, i in cluster_resamples(clusters, rounds, seed)] if rounds > 0 else []
    ci = percentile_interval(diffs, level)
    return {"difference": None if not np.isfinite(point) else float(point), "ci": ci, "p": bootstrap_p(diffs),
            "a_better": bool(ci is not None and ci[0] > 0), "b_better": bool(ci is not None and ci[1] < 0),
            "rounds": int(rounds)}


def bootstrap_p(differences) -> float | None:
    """Two-sided bootstrap p-value of no difference: twice the smaller share of resampled
    differences on either side of 0 (ties count on both), at most 1; None without finite values."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order (None stays None).

    Comparing an ensemble with each of k members is k tests; Holm's adjustment keeps the chance
    of any false "significant" among them at the nominal level, where k unadjusted tests at 5%
    would raise it towards 1 - 0.95**k.

    Example::

        holm([0.04, 0.01, 0.30, 0.02])   # [0.08, 0.04, 0.30, 0.06]
    """
    known = [(value, index) for index, value in enumerate(p_values) if value is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (value, index) in enumerate(sorted(known)):
        running = max(running, min(1.0, (len(known) - rank) * value))
        adjusted[index] = running
    return adjusted


def add_holm(comparisons: list[dict]) -> None:
    """Give each comparison ``p_holm``: its ``p`` adjusted by :func:`holm` over the comparisons given."""
    for comparison, adjusted in zip(comparisons, holm([c["p"] for c in comparisons])):
        comparison["p_holm"] = adjusted
