"""Threshold rules: today's point rule by name, the patient-bootstrap margin, and the cohort bound."""

from __future__ import annotations

import numpy as np
import pytest

from histoedge import HistoedgeError
from histoedge.training.bootstrap import cluster_ids
from histoedge.training.ensemble import choose_threshold
from histoedge.training.thresholds import (cohort_sensitivities, cohort_shortfall, matched_threshold, select_threshold,
                                          sensitivity_lower_bounds, split_lower_bounds, transfer_check)


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


def _cohort_rows(groups: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """Positive rows from ``{patient: scores}`` plus one negative row (ignored by the rule)."""
    patients = [p for p, scores in groups.items() for _ in scores] + ["negative"]
    scores = np.concatenate([*groups.values(), [0.0]])
    return np.r_[np.ones(len(scores) - 1, int), 0], scores, patients


def test_split_bound_holds_for_a_small_cohort_not_for_the_mean():
    easy = {f"p{i}": np.array([0.9, 0.8]) for i in range(10)}
    y, s, patients = _cohort_rows(easy)
    # every cohort keeps every image at 0.8
    assert select_threshold("split_lower_bound", y, s, target=0.95, patients=patients,
                            split_patients=9)["threshold"] == 0.8
    # one patient with a single low image.  A 9-patient cohort holds it twice or more with chance
    # 1 - (10/11)^9 - 9 (1/11) (10/11)^8 = 0.19, more than 1 in 10, and then at most 16 of 18
    # images (0.889) are found at 0.8, below 0.9
    y, s, patients = _cohort_rows({**easy, "low": np.array([0.1])})
    choice = select_threshold("split_lower_bound", y, s, target=0.9, patients=patients, split_patients=9)
    assert choice["threshold"] == 0.1 and choice["split_patients"] == 9
    # in 200-patient cohorts it is drawn 18 times on average (23 at the 90th percentile): 0.8 still
    # finds 0.94 of the images in 90% of them
    assert select_threshold("split_lower_bound", y, s, target=0.9, patients=patients,
                            split_patients=200)["threshold"] == 0.8
    # From a pool of 41 patients the default rule bounds the mean over 41: the low image costs at most
    # a few of ~82, so 0.8 keeps 0.95.  A 9-patient cohort holds it with chance 1 - (40/41)^9 = 0.20,
    # and then finds at most 16 of 17 images (0.941): the cohort rule must go down to 0.1.
    y, s, patients = _cohort_rows({**{f"p{i}": np.array([0.9, 0.8]) for i in range(40)}, "low": np.array([0.1])})
    assert select_threshold("patient_lower_bound", y, s, target=0.95, patients=patients)["threshold"] == 0.8
    assert select_threshold("split_lower_bound", y, s, target=0.95, patients=patients,
                            split_patients=9)["threshold"] == 0.1


def test_split_bound_matches_cohorts_drawn_one_by_one():
    y, s, patients = _validation(9, per_patient=4, seed=3)
    candidates, lower = split_lower_bounds(y, s, cluster_ids(list(patients)), split_patients=3, rounds=300, seed=5)
    positive = y == 1
    owners = [p for p in dict.fromkeys(patients[positive])]  # positive patients, first appearance first
    rng = np.random.default_rng(5)
    drawn = [[owners[k] for k in rng.integers(0, len(owners), 3)] for _ in range(300)]
    for j in (0, len(candidates) // 2, len(candidates) - 1):
        sens = [np.sum([np.sum(s[positive & (patients == p)] >= candidates[j]) for p in cohort])
                / np.sum([np.sum(positive & (patients == p)) for p in cohort]) for cohort in drawn]
        assert lower[j] == pytest.approx(np.percentile(sens, 10))
    assert lower[-1] == 1.0  # the lowest candidate keeps every positive


def test_split_bound_cohort_defaults_to_the_positive_patients_given():
    y, s, patients = _validation(12)
    choice = select_threshold("split_lower_bound", y, s, target=0.9, patients=patients)
    assert choice["split_patients"] == len(set(patients[y == 1])) == 8
    with pytest.raises(HistoedgeError, match="at least one positive patient"):
        select_threshold("split_lower_bound", y, s, target=0.9, patients=patients, split_patients=0)


def test_every_rule_reports_how_often_a_small_cohort_misses():
    # 40 patients found at 0.8 and one whose only image scores 0.1: at 0.8 a 9-patient cohort misses
    # 0.95 exactly when it draws that patient (16 of 17 images at best), with chance 1 - (40/41)^9 = 0.199
    y, s, patients = _cohort_rows({**{f"p{i}": np.array([0.9, 0.8]) for i in range(40)}, "low": np.array([0.1])})
    mean_bound = select_threshold("patient_lower_bound", y, s, target=0.95, patients=patients, split_patients=9,
                                  rounds=4000)
    assert mean_bound["threshold"] == 0.8 and mean_bound["cohort_patients"] == 9
    assert mean_bound["cohort_below_target"] == pytest.approx(1 - (40 / 41) ** 9, abs=0.02)
    # the cohort rule goes down to 0.1, where every cohort keeps every image
    strict = select_threshold("split_lower_bound", y, s, target=0.95, patients=patients, split_patients=9)
    assert strict["threshold"] == 0.1 and strict["cohort_below_target"] == 0.0
    # the cohorts default to as many patients as the positive ones given, for every rule
    assert select_threshold("validation_point", y, s, target=0.95, patients=patients)["cohort_patients"] == 41


def test_cohort_shortfall_uses_the_split_bound_draws():
    y, s, patients = _validation(12)
    clusters = cluster_ids(list(patients))
    candidates, lower = split_lower_bounds(y, s, clusters, split_patients=5, confidence=0.8, seed=2)
    for j in (0, len(candidates) // 3, len(candidates) // 2):
        share = cohort_shortfall(y, s, clusters, threshold=candidates[j], target=lower[j], split_patients=5, seed=2)
        assert share <= 0.2  # at most the 20% the bound leaves below it, on the very same cohorts
    # at the threshold the cohort rule chooses, at most 1 - confidence of its cohorts miss
    choice = select_threshold("split_lower_bound", y, s, target=0.9, patients=patients, confidence=0.9)
    assert choice["cohort_below_target"] <= 0.1
    with pytest.raises(HistoedgeError, match="at least one positive patient"):
        cohort_shortfall(y, s, clusters, threshold=0.5, target=0.9, split_patients=0)


def test_one_patient_cohorts_are_all_or_nothing_and_weighted_by_images():
    # patient 0: 1 of 1 image found; patient 1: 0 of 3
    one = cohort_sensitivities(np.array([1, 0]), np.array([1, 3]), split_patients=1, rounds=2000)
    assert set(np.unique(one)) == {0.0, 1.0}
    assert abs(one.mean() - 0.5) < 0.05
    two = cohort_sensitivities(np.array([1, 0]), np.array([1, 3]), split_patients=2, rounds=2000)
    # {0, 0}: 0/6, {0, 1}: 1/4 (images, not patients, are averaged), {1, 1}: 2/2
    assert set(np.round(np.unique(two), 6)) == {0.0, 0.25, 1.0}


def test_cohort_sensitivities_at_several_thresholds_at_once_match_one_at_a_time():
    hits = np.array([[3, 4], [0, 2], [1, 1]])
    sizes = np.array([4, 2, 1])
    both = cohort_sensitivities(hits, sizes, split_patients=3, rounds=50, seed=7)
    for t in range(2):
        assert np.allclose(both[:, t], cohort_sensitivities(hits[:, t], sizes, split_patients=3, rounds=50, seed=7))


def test_transfer_check_counts_both_scorings_of_the_same_rows():
    # 4 positives, 2 negatives; the deployed scores sit lower, as a sharper model's would.
    y = np.array([1, 1, 1, 1, 0, 0])
    fold = np.array([0.9, 0.8, 0.5, 0.45, 0.5, 0.1])
    deployed = np.array([0.9, 0.6, 0.3, 0.2, 0.35, 0.05])
    check = transfer_check(y, fold, deployed, threshold=0.4)
    # the fold scores flag 5 of 6 rows; the 5th highest deployed score (0.2) flags them too
    assert check == {"images": 6, "out_of_fold": {"sensitivity": 1.0, "specificity": 0.5},
                     "deployed": {"sensitivity": 0.5, "specificity": 1.0},
                     "matched": {"threshold": 0.2, "flagged_share": 5 / 6,
                                 "deployed": {"sensitivity": 1.0, "specificity": 0.5}}}
    assert transfer_check(y[:4], fold[:4], deployed[:4], threshold=0.4)["deployed"]["specificity"] is None
    with pytest.raises(HistoedgeError, match="expected 6 scores"):
        transfer_check(y, fold, deployed[:5], threshold=0.4)


def test_matched_threshold_undoes_a_change_of_scale():
    # Deployed scores that rank the rows as the fold scores do, on another scale: the matched
    # threshold flags exactly the rows the fold threshold flags, whatever that threshold is.
    rng = np.random.default_rng(3)
    fold = rng.uniform(0.01, 0.99, 200)
    logit = np.log(fold / (1 - fold))
    deployed = 1 / (1 + np.exp(-(2.5 * logit - 1.0)))
    for threshold in (0.05, 0.3, 0.5, 0.77, 0.98):
        matched = matched_threshold(fold, deployed, threshold=threshold)
        np.testing.assert_array_equal(deployed >= matched["threshold"], fold >= threshold)
        assert matched["flagged_share"] == pytest.approx(np.mean(fold >= threshold))
    assert matched_threshold(fold, deployed, threshold=0.0)["threshold"] == deployed.min()  # every row flagged
    none = matched_threshold(fold, deployed, threshold=1.0)  # no row flagged: neither may the deployed scores
    assert none["flagged_share"] == 0 and not (deployed >= none["threshold"]).any()


def test_matched_threshold_keeps_the_share_when_rankings_differ():
    fold = np.array([0.9, 0.7, 0.6, 0.2])
    deployed = np.array([0.1, 0.8, 0.3, 0.5])  # another order: the share flagged carries over, not the rows
    assert matched_threshold(fold, deployed, threshold=0.65) == {"threshold": 0.5, "flagged_share": 0.5}
    tied = matched_threshold(fold, np.array([0.4, 0.4, 0.4, 0.1]), threshold=0.65)
    assert tied["threshold"] == 0.4  # at least the share: ties at the boundary are all flagged
    with pytest.raises(HistoedgeError, match="scored twice"):
        matched_threshold(fold, deployed[:3], threshold=0.5)
    with pytest.raises(HistoedgeError, match="scored twice"):
        matched_threshold([], [], threshold=0.5)
