"""Classification metrics with percentile-bootstrap confidence intervals.

Every function takes integer labels ``y_true`` [N] and probabilities ``probs``
[N, C] (column i is class i) and returns plain Python values, so results can be
written with :func:`json.dump` directly.

Binary problems (C == 2) are scored at a decision threshold on P(positive
class); multi-class problems use arg-max decisions and macro averages
(one-vs-rest for the AUCs) plus per-class precision, recall, F1 and
specificity.

Expected calibration error (ECE) uses 15 equal-width bins over the confidence
of the arg-max class, ``max_c p_c``:
``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``.
It measures the calibration of the probabilities, not of a particular
threshold, so it is the same at every threshold.

Example:
    >>> y = np.array([0, 1, 1, 0])
    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    >>> classification_metrics(y, p, threshold=0.5)["recall"]
    0.5
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

TABLE_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece")
ECE_BINS = 15


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else 0.0


def roc_auc(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); NaN if one class is absent."""
    y_binary = np.asarray(y_binary, dtype=bool)
    n_pos = int(y_binary.sum())
    n_neg = y_binary.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[y_binary].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_binary: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision, ``sum_n (R_n - R_{n-1}) P_n`` (as scikit-learn); NaN without positives."""
    y_binary = np.asarray(y_binary, dtype=bool)
    n_pos = int(y_binary.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    true_positives = np.cumsum(y_binary[order])
    # Evaluate only at the last index of each run of tied scores (distinct thresholds).
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], sorted_scores.size - 1]
    tp = true_positives[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over ``n_bins`` equal-width bins of the arg-max confidence (see module docstring)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence 0 goes to the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / len(confidence))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [C, C]: rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def predict_labels(probs: np.ndarray, threshold: float | None = None, positive_class: int = 1) -> np.ndarray:
    """Binary: positive iff P(positive) >= threshold (default 0.5); multi-class: arg-max."""
    probs = np.asarray(probs)
    if probs.shape[1] == 2:
        threshold = 0.5 if threshold is None else threshold
        positive = probs[:, positive_class] >= threshold
        return np.where(positive, positive_class, 1 - positive_class)
    return probs.argmax(axis=1)


def _per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = matrix.sum() - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1}


def _nan_to_none(value: float):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def classification_metrics(y_true, probs, *, threshold: float | None = None, positive_class: int = 1,
                           classes=None) -> dict:
    """All metrics for one set of predictions.

    Args:
        y_true: int labels [N].
        probs: probabilities [N, C].
        threshold: binary only, decision threshold on P(positive); default 0.5.
        positive_class: binary only, index of the positive class.
        classes: optional class names for the per-class section (multi-class).

    Returns:
        dict with the :data:`TABLE_METRICS`, ``confusion_matrix`` (rows true), ``n`` and, for
        multi-class, ``per_class``; undefined AUCs (one class absent) are ``None``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    y_pred = predict_labels(probs, threshold, positive_class)
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    result = {"n": int(len(y_true)), "accuracy": _ratio(np.trace(matrix), matrix.sum())}
    per_class = _per_class(matrix)
    if n_classes == 2:
        positive = y_true == positive_class
        scores = probs[:, positive_class]
        result.update({name: float(values[positive_class]) for name, values in per_class.items()})
        result["roc_auc"] = roc_auc(positive, scores)
        result["pr_auc"] = average_precision(positive, scores)
        result["threshold"] = 0.5 if threshold is None else float(threshold)
    else:
        result.update({name: float(values.mean()) for name, values in per_class.items()})
        aucs = [roc_auc(y_true == c, probs[:, c]) for c in range(n_classes)]
        aps = [average_precision(y_true == c, probs[:, c]) for c in range(n_classes)]
        result["roc_auc"] = float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else math.nan
        result["pr_auc"] = float(np.nanmean(aps)) if not np.all(np.isnan(aps)) else math.nan
        names = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
        result["per_class"] = {
            names[c]: {**{k: float(v[c]) for k, v in per_class.items()},
                       "roc_auc": _nan_to_none(aucs[c]), "support": int(matrix[c].sum())}
            for c in range(n_classes)}
    result["ece"] = expected_calibration_error(y_true, probs)
    result["confusion_matrix"] = matrix.tolist()
    return {k: _nan_to_none(v) for k, v in result.items()}


def bootstrap_intervals(y_true, probs, *, threshold: float | None = None, positive_class: int = 1,
                        rounds: int = 1000, seed: int = 0, level: float = 0.95, clusters=None) -> dict:
    """Percentile bootstrap intervals of the :data:`TABLE_METRICS`.

    Args:
        clusters: cluster (patient) per image, from :func:`~histoedge.training.bootstrap.cluster_ids`;
            whole clusters are resampled.  None: every image is its own cluster (image bootstrap).

    Returns ``{metric: [low, high]}``; a metric undefined in every resample (e.g. an AUC with a
    single class present) gets ``None``.  Resamples where it is undefined are left out.
    """
    from histoedge.training.bootstrap import cluster_resamples, percentile_interval

    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if rounds <= 0:
        return {}
    clusters = np.arange(len(y_true)) if clusters is None else np.asarray(clusters)
    samples = {name: [] for name in TABLE_METRICS}
    for _, index in cluster_resamples(clusters, rounds, seed):
        values = _table_values(y_true[index], probs[index], threshold, positive_class)
        for name in TABLE_METRICS:
            samples[name].append(values[name])
    return {name: percentile_interval(values, level) for name, values in samples.items()}


def _table_values(y_true, probs, threshold, positive_class) -> dict:
    metrics = classification_metrics(y_true, probs, threshold=threshold, positive_class=positive_class)
    return {name: math.nan if metrics[name] is None else metrics[name] for name in TABLE_METRICS}


def evaluate(y_true, probs, *, threshold: float | None = None, positive_class: int = 1, classes=None,
             bootstrap: int = 1000, seed: int = 0, clusters=None) -> dict:
    """:func:`classification_metrics` plus ``ci`` (95% percentile bootstrap intervals).

    ``clusters`` (patient per image, see :func:`bootstrap_intervals`) makes the intervals resample
    patients; ``bootstrap_unit`` records which ("images" or "patients").

    Example:
        >>> evaluate(y, p, threshold=0.3, bootstrap=200)["ci"]["roc_auc"]
        [0.5, 1.0]
    """
    result = classification_metrics(y_true, probs, threshold=threshold, positive_class=positive_class,
                                     classes=classes)
    result["ci"] = bootstrap_intervals(y_true, probs, threshold=threshold, positive_class=positive_class,
                                       rounds=bootstrap, seed=seed, clusters=clusters)
    result["bootstrap_rounds"] = int(bootstrap)
    single = clusters is None or len(np.unique(clusters)) == len(np.asarray(y_true))
    result["bootstrap_unit"] = "images" if single else "patients"
    return result


def macro_roc_auc(y_true, probs, positive_class: int = 1) -> float:
    """Binary: ROC-AUC of P(positive); multi-class: macro one-vs-rest ROC-AUC (NaN if undefined)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return roc_auc(y_true == positive_class, probs[:, positive_class])
    aucs = [roc_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]
    return math.nan if np.all(np.isnan(aucs)) else float(np.nanmean(aucs))
