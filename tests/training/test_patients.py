"""Patient aggregation, recognition rate, the cluster bootstrap and paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from histoedge.training.bootstrap import bootstrap_p, cluster_ids, cluster_resamples, holm, paired_difference
from histoedge.training.metrics import bootstrap_intervals, macro_roc_auc
from histoedge.training.patients import aggregate, patient_metrics, patient_units, recognition_rate


def _probs(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


# Patients a (3 malignant images), b (2 benign), c (1 benign), and one malignant image without an id.
Y = np.array([1, 1, 1, 0, 0, 1, 0])
P = _probs([0.9, 0.4, 0.8, 0.2, 0.6, 0.7, 0.1])
PATIENTS = ["a", "a", "a", "b", "b", None, "c"]


def test_patient_aggregation_and_recognition_rate_by_hand():
    units, labels = patient_units(Y, PATIENTS)
    assert units.tolist() == [0, 0, 0, 1, 1, 2, 3] and labels.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(aggregate(P, units, "mean")[:, 1], [0.7, 0.4, 0.7, 0.1])
    np.testing.assert_allclose(aggregate(P, units, "median")[:, 1], [0.8, 0.4, 0.7, 0.1])
    np.testing.assert_allclose(aggregate(P, units, "max")[:, 1], [0.9, 0.6, 0.7, 0.1])
    # images right at 0.5: a 2/3, b 1/2, the lone image 1/1, c 1/1
    assert recognition_rate(Y, P, units, threshold=0.5) == pytest.approx((2 / 3 + 1 / 2 + 1 + 1) / 4)
    result = patient_metrics(Y, P, PATIENTS, threshold=0.5, aggregation="mean", bootstrap=0)
    assert result["n_patients"] == 4 and result["recall"] == 1.0 and result["specificity"] == 1.0
    assert result["recognition_rate"] == pytest.approx(0.7916666, abs=1e-6)
    assert result["confusion_matrix"] == [[2, 0], [0, 2]]
    # with max aggregation patient b (max 0.6) becomes a false positive
    assert patient_metrics(Y, P, PATIENTS, threshold=0.5, aggregation="max", bootstrap=0)["specificity"] == 0.5
    # multi-class: per-class aggregation renormalised, arg-max decisions
    three = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(aggregate(three, np.array([0, 0, 1]), "max"), [[0.6 / 1.4, 0.7 / 1.4, 0.1 / 1.4],
                                                                             [0.1, 0.1, 0.8]])


def test_cluster_bootstrap_resamples_whole_patients():
    patients = ["p1"] * 4 + ["p2"] * 2 + [None, None] + ["p3"] * 3
    clusters = cluster_ids(patients)
    assert clusters.tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 4, 4, 4]
    seen = set()
    for drawn, index in cluster_resamples(clusters, rounds=50, seed=1):
        assert len(drawn) == 5  # as many draws as clusters
        # each drawn patient comes with all of its images, once per draw
        expected = np.concatenate([np.flatnonzero(clusters == c) for c in drawn])
        np.testing.assert_array_equal(index, expected)
        counts = np.bincount(clusters[index], minlength=5)
        np.testing.assert_array_equal(counts, np.bincount(drawn, minlength=5) * np.bincount(clusters))
        ids = [patients[i] for i in index]
        for patient in ("p1", "p2", "p3"):
            assert ids.count(patient) % patients.count(patient) == 0
        seen.add(tuple(sorted(drawn)))
    assert len(seen) > 10  # resamples differ
    # no patient ids: the image bootstrap, unchanged
    assert cluster_ids(None, 4).tolist() == [0, 1, 2, 3]


def test_cluster_intervals_are_wider_than_image_intervals_for_alike_images():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(10), 30)
    y = (patients % 2).astype(int)
    effect = rng.normal(0, 0.25, 10)[patients]  # images of a patient are alike
    p = _probs(np.clip(0.5 + 0.15 * (2 * y - 1) + effect + rng.normal(0, 0.05, 300), 0, 1))
    image = bootstrap_intervals(y, p, threshold=0.5, rounds=300, seed=0)
    patient = bootstrap_intervals(y, p, threshold=0.5, rounds=300, seed=0, clusters=cluster_ids(patients))
    width = {k: (v["accuracy"][1] - v["accuracy"][0]) for k, v in (("image", image), ("patient", patient))}
    assert width["patient"] > 2 * width["image"]


def test_paired_difference_is_paired_and_signed():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(40), 5)
    y = (patients % 2).astype(int)
    good = _probs(np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 200), 0, 1))
    noisy = _probs(np.clip(0.5 + 0.05 * (2 * y - 1) + rng.normal(0, 0.3, 200), 0, 1))
    clusters = cluster_ids(patients)
    better = paired_difference(macro_roc_auc, y, good, noisy, clusters, rounds=300)
    assert better["difference"] == pytest.approx(macro_roc_auc(y, good) - macro_roc_auc(y, noisy))
    assert better["a_better"] and not better["b_better"] and better["ci"][0] > 0
    same = paired_difference(macro_roc_auc, y, good, good, clusters, rounds=100)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and not (same["a_better"] or same["b_better"])
    assert better["p"] == 0.0 and same["p"] == 1.0  # every resample above 0; every resample a tie


def test_bootstrap_p_is_twice_the_smaller_tail():
    assert bootstrap_p([-1, 1, 2, 3]) == 0.5
    assert bootstrap_p([1, 2, 3, 4]) == 0.0
    assert bootstrap_p([0, 0]) == 1.0
    assert bootstrap_p([np.nan]) is None


def test_holm_steps_down_and_stays_monotone():
    # sorted 0.01, 0.02, 0.04, 0.30 -> 4*0.01, 3*0.02, max(0.06, 2*0.04), max(0.08, 1*0.30)
    assert holm([0.04, 0.01, 0.30, 0.02]) == pytest.approx([0.08, 0.04, 0.30, 0.06])
    # a later, smaller product never goes below an earlier one; nothing exceeds 1; None is kept
    assert holm([0.01, 0.011, 0.5]) == pytest.approx([0.03, 0.03, 0.5])
    assert holm([0.6, None, 0.7]) == [1.0, None, 1.0]
