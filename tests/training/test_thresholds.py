"""Threshold rules: today's point rule by name, and the patient-bootstrap margin."""

from __future__ import annotations

import numpy as np
import pytest

from histoedge import HistoedgeError
from histoedge.training.bootstrap import cluster_ids
from histoedge.training.ensemble import choose_threshold
from histoedge.training.thresholds import select_threshold, sensitivity_lower_bounds


def _validation(n_patients, per_patient=15, seed=0):
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), per_patient)
    y = (patients % 3 != 0).astype(int)
    score = 0.3 + 0.35 * y + rng.normal(0, 0.12, n_patients)[patients] + rng.normal(0, 0.08, len(y))
    return y, np.clip(score, 0, 1), patients


def test_validation_point_is_todays_rule():
    y, s, patients = _validation(12)
    choice = select_threshold("validation_point", y, s, target=0.95, patients=patients)
    assert choice["threshold"] == choose_threshold(y, s, 0.95) and choice["val_sensitivity"] >= 0.95


def test_lower_bound_rule_is_the_highest_threshold_whose_bound_reaches_the_target():
    y, s, patients = _validation(12)
    choice = select_threshold("patient_lower_bound", y, s, target=0.95, patients=patients, confidence=0.9)
    candidates, lower = sensitivity_lower_bounds(y, s, cluster_ids(patients), confidence=0.9)
    j = int(np.flatnonzero(candidates == choice["threshold"])[0])
    assert lower[j] >= 0.95 and choice["val_sensitivity_lower_bound"] == lower[j]
    assert (lower[:j] < 0.95).all()  # every higher candidate falls short
    assert choice["val_patients"] == 8
    # the margin: below the point rule's threshold, so validation sensitivity is above the target
    point = choose_threshold(y, s, 0.95)
    assert choice["threshold"] < point and choice["val_sensitivity"] > 0.95
    # a lower bound at a higher level asks for a wider margin
    stricter = select_threshold("patient_lower_bound", y, s, target=0.95, patients=patients, confidence=0.97)
    assert stricter["threshold"] <= choice["threshold"]


def test_margin_shrinks_with_more_patients():
    margins = []
    for n in (9, 90):
        y, s, patients = _validation(n, seed=3)
        point = choose_threshold(y, s, 0.9)
        margins.append(point - select_threshold("patient_lower_bound", y, s, target=0.9, patients=patients)["threshold"])
    assert margins[0] > margins[1] >= 0


def test_images_without_patients_are_their_own_cluster_and_errors():
    y, s, patients = _validation(12)
    by_image = select_threshold("patient_lower_bound", y, s, target=0.95)
    by_patient = select_threshold("patient_lower_bound", y, s, target=0.95, patients=patients)
    assert by_image["val_patients"] == int((y == 1).sum())
    assert by_image["threshold"] >= by_patient["threshold"]  # alike images hide how few patients there are
    with pytest.raises(HistoedgeError, match="no positive"):
        select_threshold("patient_lower_bound", np.zeros(5, int), np.ones(5), target=0.9)
    with pytest.raises(HistoedgeError, match="unknown threshold rule"):
        select_threshold("youden", y, s, target=0.9)
