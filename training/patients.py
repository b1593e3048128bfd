"""Patient-level results: a patient's images aggregated into one prediction, and the recognition rate.

The BreakHis literature reports both image-level and patient-level results.  A *patient* here is a
(patient id, label) pair, so a patient whose images carry two labels (multi-class data) counts once
per label; an image without a patient id is a patient of its own.

* Patient probabilities: each class's probability aggregated over the patient's images (``mean``,
  ``median`` or ``max``; rows renormalised to sum to 1), then scored like images (threshold on
  P(positive) for binary, arg-max otherwise): patient ROC-AUC, sensitivity, specificity, ...
* Patient recognition rate (Spanhol et al. 2016): each patient's score is the fraction of its
  images classified correctly, ``N_rec / N_P``; the rate is the mean score over patients.

Example::

    result = patient_metrics(y, probs, patients, threshold=0.4, aggregation="mean", bootstrap=1000)
    result["recognition_rate"], result["roc_auc"], result["ci"]["recall"]
"""

from __future__ import annotations

import numpy as np

from histoedge.training.bootstrap import cluster_ids, cluster_resamples, percentile_interval
from histoedge.training.config import PATIENT_AGGREGATIONS
from histoedge.training.metrics import TABLE_METRICS, classification_metrics, predict_labels

AGGREGATIONS = PATIENT_AGGREGATIONS  # "mean", "median", "max"
PATIENT_METRICS = (*TABLE_METRICS, "recognition_rate")


def patient_units(y_true, patients) -> tuple[np.ndarray, np.ndarray]:
    """``(unit per image [N], label per unit [U])``: one unit per (patient, label) pair."""
    y_true = np.asarray(y_true, dtype=np.int64)
    clusters = cluster_ids(patients, len(y_true))
    keys: dict = {}
    units = np.array([keys.setdefault((int(c), int(y)), len(keys)) for c, y in zip(clusters, y_true)], dtype=np.int64)
    labels = np.array([y for (_, y) in keys], dtype=np.int64)
    return units, labels


def aggregate(probs, units, aggregation: str = "mean", n_units: int | None = None) -> np.ndarray:
    """Per-unit probabilities [U, C] from image probabilities [N, C] and unit ids [N]."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"patient aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    probs, units = np.asarray(probs, dtype=np.float64), np.asarray(units)
    n_units = int(units.max()) + 1 if n_units is None else n_units
    # binary: aggregate P(positive) only, so the threshold means the same as for images
    columns = probs[:, 1:2] if probs.shape[1] == 2 else probs
    if aggregation == "mean":
        out = np.zeros((n_units, columns.shape[1]))
        np.add.at(out, units, columns)
        out /= np.bincount(units, minlength=n_units)[:, None]
    elif aggregation == "max":
        out = np.full((n_units, columns.shape[1]), -np.inf)
        np.maximum.at(out, units, columns)
    else:
        out = np.stack([np.median(columns[units == u], axis=0) for u in range(n_units)])
    if probs.shape[1] == 2:
        return np.concatenate([1.0 - out, out], axis=1)
    return out / out.sum(axis=1, keepdims=True)


def recognition_rate(y_true, probs, units, *, threshold: float | None = None, positive_class: int = 1) -> float:
    """Spanhol et al.'s patient recognition rate: mean over units of the fraction of images right."""
    y_true, units = np.asarray(y_true), np.asarray(units)
    correct = predict_labels(np.asarray(probs, dtype=np.float64), threshold, positive_class) == y_true
    per_unit = np.bincount(units, weights=correct) / np.bincount(units)
    return float(per_unit[np.bincount(units) > 0].mean())


def _values(y_true, probs, units, unit_labels, threshold, positive_class, aggregation) -> dict:
    unit_probs = aggregate(probs, units, aggregation, len(unit_labels))
    result = classification_metrics(unit_labels, unit_probs, threshold=threshold, positive_class=positive_class)
    result["recognition_rate"] = recognition_rate(y_true, probs, units, threshold=threshold,
                                                  positive_class=positive_class)
    return result


def patient_metrics(y_true, probs, patients, *, threshold: float | None = None, positive_class: int = 1,
                    aggregation: str = "mean", bootstrap: int = 1000, seed: int = 0) -> dict:
    """Patient-level metrics with patient-bootstrap intervals (JSON-ready).

    Args:
        y_true: image labels [N].
        probs: image probabilities [N, C].
        patients: patient id per image (None entries, or None: each image its own patient).
        threshold: binary decision threshold on P(positive), applied to the aggregated probability
            and, for the recognition rate, to each image.
        aggregation: "mean", "median" or "max".
        bootstrap: resamples of patients for the ``ci`` intervals (0: none).

    Returns:
        The :data:`PATIENT_METRICS`, ``n_patients``, ``aggregation``, ``confusion_matrix`` (of
        patients) and ``ci``.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    units, unit_labels = patient_units(y_true, patients)
    point = _values(y_true, probs, units, unit_labels, threshold, positive_class, aggregation)
    result = {"n_patients": int(len(unit_labels)), "aggregation": aggregation,
              **{k: point[k] for k in (*PATIENT_METRICS, "confusion_matrix")}}
    if "threshold" in point:
        result["threshold"] = point["threshold"]
    samples = {name: [] for name in PATIENT_METRICS}
    clusters = cluster_ids(patients, len(y_true))
    sizes = np.bincount(clusters)
    for drawn, index in (cluster_resamples(clusters, bootstrap, seed) if bootstrap > 0 else ()):
        # A patient drawn twice counts as two patients of the resample: number units per draw.
        slot = np.repeat(np.arange(len(drawn)), sizes[drawn])
        keys, inverse = np.unique(slot * len(unit_labels) + units[index], return_inverse=True)
        values = _values(y_true[index], probs[index], inverse, unit_labels[keys % len(unit_labels)], threshold,
                         positive_class, aggregation)
        for name in PATIENT_METRICS:
            samples[name].append(np.nan if values[name] is None else values[name])
    result["ci"] = {name: percentile_interval(v) for name, v in samples.items()} if bootstrap > 0 else {}
    result["bootstrap_rounds"] = int(bootstrap)
    return result
