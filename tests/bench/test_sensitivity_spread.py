"""bench/sensitivity_spread.py: the spread of a small split's sensitivity, against hand-computed cases."""

import numpy as np

from bench.sensitivity_spread import split_bound_threshold, split_sensitivities


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


def test_the_bound_holds_for_a_split_not_for_the_mean():
    easy = {f"p{i}": np.array([0.9, 0.8]) for i in range(10)}
    # every split keeps every image at 0.8
    assert split_bound_threshold(easy, m=9, target=0.95) == 0.8
    # one patient with a single low image.  A 9-patient split holds it twice or more with chance
    # 1 - (10/11)^9 - 9 (1/11) (10/11)^8 = 0.19, more than 1 in 10, and then at most 16 of 18
    # images (0.889) are found at 0.8, below 0.9
    hard = {**easy, "low": np.array([0.1])}
    assert split_bound_threshold(hard, m=9, target=0.9) == 0.1
    # in 200-patient splits it is drawn 18 times on average (23 at the 90th percentile): 0.8 still
    # finds 0.94 of the images in 90% of them
    assert split_bound_threshold(hard, m=200, target=0.9) == 0.8
