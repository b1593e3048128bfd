"""bench/ensemble_vs_members.py: Holm's adjustment and the bootstrap p-value against hand-computed values."""

import numpy as np

from bench.ensemble_vs_members import bootstrap_p, holm


def test_holm_steps_down_and_stays_monotone():
    # sorted 0.01, 0.02, 0.04, 0.30 -> 4*0.01, 3*0.02, max(0.06, 2*0.04), max(0.08, 1*0.30)
    assert np.allclose(holm([0.04, 0.01, 0.30, 0.02]), [0.08, 0.04, 0.30, 0.06])
    # a later, larger product never goes below an earlier one, and nothing exceeds 1
    assert np.allclose(holm([0.01, 0.011, 0.5]), [0.03, 0.03, 0.5])
    assert np.allclose(holm([0.6, 0.7]), [1.0, 1.0])


def test_bootstrap_p_is_twice_the_smaller_tail():
    assert bootstrap_p([-1, 1, 2, 3]) == 0.5
    assert bootstrap_p([1, 2, 3, 4]) == 0.0
    assert bootstrap_p([0, 0]) == 1.0
