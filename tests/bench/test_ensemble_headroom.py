"""bench/ensemble_headroom.py: the room members leave a combiner, and pairing a run with its copy."""

import csv

import numpy as np
import pytest

from bench.ensemble_headroom import compare_ensembles, headroom, simplex_grid
from histoedge.training.report import save_predictions


def test_grid_holds_every_non_negative_weighting_that_sums_to_one():
    grid = simplex_grid(3, 0.5)
    assert sorted(map(tuple, grid)) == sorted([(1, 0, 0), (0, 1, 0), (0, 0, 1), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)])
    assert len(simplex_grid(5, 0.1)) == 1001  # C(14, 4)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_members_that_err_on_different_images_leave_headroom_and_identical_ones_none():
    # Each member misranks a different positive below a negative; their mean ranks all correctly.
    y = np.array([0, 0, 1, 1])
    a = np.array([0.2, 0.5, 0.4, 0.9])  # positive 2 below negative 1
    b = np.array([0.5, 0.2, 0.9, 0.4])  # positive 3 below negative 0
    found = headroom(y, {"a": a, "b": b}, step=0.5)
    assert found["best_member_auc"] == pytest.approx(0.75)
    assert found["combination_auc"] == 1.0 and found["weights"] == {"a": 0.5, "b": 0.5}
    assert found["headroom"] == pytest.approx(0.25)
    same = headroom(y, {"a": a, "b": a.copy()}, step=0.5)
    assert same["headroom"] == 0 and same["correlation"] == pytest.approx(1.0)


def _fake_run(path, ensemble, patients):
    path.mkdir()
    y = np.array([0, 1, 0, 1, 0, 1])
    probs = {"m1": np.stack([1 - ensemble, ensemble], axis=1), "ensemble": np.stack([1 - ensemble, ensemble], axis=1)}
    save_predictions(path, classes=["benign", "malignant"], members=["m1"], val_labels=y, test_labels=y,
                     val=probs, test=probs)
    with open(path / "splits.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "patient", "split"))
        writer.writerows((f"img{i}.png", "malignant" if y[i] else "benign", patients[i], "test") for i in range(6))


def test_a_run_is_compared_only_with_a_copy_holding_the_same_test_rows(tmp_path):
    patients = ["p1", "p1", "p2", "p2", "p3", "p3"]
    scores = np.array([0.1, 0.9, 0.3, 0.6, 0.7, 0.8])
    _fake_run(tmp_path / "base", scores, patients)
    _fake_run(tmp_path / "wider", np.array([0.1, 0.9, 0.3, 0.6, 0.2, 0.8]), patients)
    found = compare_ensembles(tmp_path / "base", tmp_path / "wider", rounds=200, seed=0)
    # base ranks one negative (0.7) above a positive (0.6): 8/9; wider ranks all: 9/9
    assert found["difference"] == pytest.approx(1 / 9)
    _fake_run(tmp_path / "other", scores, ["p1", "p1", "p2", "p2", "p3", "p4"])
    with pytest.raises(SystemExit, match="same test rows"):
        compare_ensembles(tmp_path / "base", tmp_path / "other", rounds=10, seed=0)
