"""bench/threshold_coverage.py: the default rule's bound, checked against re-drawn patients."""

import numpy as np

from bench.threshold_coverage import coverage


def test_a_lower_bound_rule_misses_about_as_often_as_its_level_allows():
    # 300 patients with one image each: the patient bootstrap is an image bootstrap, whose 90%
    # lower bound should leave the population below the target in roughly a tenth of draws.
    scores = np.random.default_rng(0).beta(5, 1.5, 300)
    result = coverage(scores, np.arange(300), target=0.95, confidence=0.9, rounds=120, seed=1)
    assert len(result["thresholds"]) == len(result["population_sensitivity"]) == 120
    for threshold, sensitivity in zip(result["thresholds"][:5], result["population_sensitivity"][:5]):
        assert sensitivity == np.mean(scores >= threshold)  # read on the whole population
    assert 0.02 <= result["share_below_target"] <= 0.25
    assert result["mean_population_sensitivity"] > 0.95
    # The point rule has no margin: it misses far more often.
    point = coverage(scores, np.arange(300), target=0.95, rounds=120, seed=1, rule="validation_point")
    assert point["share_below_target"] > result["share_below_target"] + 0.2


def test_patients_are_drawn_whole():
    # Two patients, one all high and one all low: every draw holds whole patients, so the
    # population sensitivity at any chosen threshold is 0.5, 1.0 or found between them exactly.
    scores = np.array([0.9, 0.95, 0.99, 0.1, 0.2, 0.3])
    result = coverage(scores, ["a", "a", "a", "b", "b", "b"], target=0.95, rounds=40, seed=3)
    assert result["patients"] == 2 and result["images"] == 6
    assert set(np.round(result["population_sensitivity"], 6)) <= {0.5, 1.0}
    assert set(result["thresholds"]) <= {0.9, 0.1}  # the lowest score of the lowest patient drawn
