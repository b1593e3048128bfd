"""bench/sensitivity_spread.py: the spread of a small split's sensitivity, against hand-computed cases."""

import numpy as np

from bench.sensitivity_spread import split_sensitivities


def test_one_patient_splits_are_all_or_nothing_and_weighted_by_images():
    # patient 0: 1 of 1 image found; patient 1: 0 of 3
    one = split_sensitivities(np.array([1, 0]), np.array([1, 3]), m=1, rounds=2000)
    assert set(np.unique(one)) == {0.0, 1.0}
    assert abs(one.mean() - 0.5) < 0.05
    two = split_sensitivities(np.array([1, 0]), np.array([1, 3]), m=2, rounds=2000)
    # {0, 0}: 0/6, {0, 1}: 1/4 (images, not patients, are averaged), {1, 1}: 2/2
    assert set(np.round(np.unique(two), 6)) == {0.0, 0.25, 1.0}


def test_several_thresholds_at_once_match_one_at_a_time():
    hits = np.array([[3, 4], [0, 2], [1, 1]])
    sizes = np.array([4, 2, 1])
    both = split_sensitivities(hits, sizes, m=3, rounds=50, seed=7)
    for t in range(2):
        assert np.allclose(both[:, t], split_sensitivities(hits[:, t], sizes, m=3, rounds=50, seed=7))
