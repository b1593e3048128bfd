"""Features, profile, quality checks, PSI windows and feedback outcomes, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import recall_score

from histoedge.serving.monitoring.drift import RowWindow, psi
from histoedge.serving.monitoring.features import FEATURES, image_features
from histoedge.serving.monitoring.feedback import Outcomes, Prediction, PredictionLog
from histoedge.serving.monitoring.profile import (PROFILE_FILE, ProfileError, ReferenceProfile, build_profile,
                                                  file_reference, load_profile, uncertainty_band)
from histoedge.serving.monitoring.quality import assess, uncertain
from tests.serving.monitoring.images import blur, he_tiles, stain_shift


@pytest.fixture(scope="module")
def tiles():
    return he_tiles(240, 32, seed=0)[0]


@pytest.fixture(scope="module")
def profile(tiles):
    ratios = np.full(len(tiles), 4 / 3)
    return build_profile(image_features(tiles), None, None, aspect_ratios=ratios)


def column(values, name):
    return values[:, FEATURES.index(name)]


def test_features_respond_to_blur_stain_and_background(tiles):
    normal = image_features(tiles)
    assert normal.shape == (len(tiles), len(FEATURES)) and np.isfinite(normal).all()
    assert np.median(column(image_features(blur(tiles)), "focus")) < 0.1 * np.median(column(normal, "focus"))
    shifted = image_features(stain_shift(tiles))
    assert np.median(column(shifted, "od_hematoxylin")) < 0.6 * np.median(column(normal, "od_hematoxylin"))
    assert np.median(column(shifted, "od_eosin")) > 1.8 * np.median(column(normal, "od_eosin"))
    white = np.full((2, 32, 32, 3), 245, np.uint8)
    assert column(image_features(white), "tissue_fraction").max() == 0
    # one implementation for every size: a 224-px tile is measured on a 112-px copy
    big = np.repeat(np.repeat(tiles[:4], 7, axis=1), 7, axis=2)
    assert image_features(big).shape == (4, len(FEATURES))
    with pytest.raises(ValueError):
        image_features(tiles.astype(np.float32))


@pytest.mark.parametrize("side", [32, 224, 300])
def test_a_batch_is_measured_in_chunks_with_the_same_values_as_one_image_at_a_time(tiles, side):
    from histoedge.serving.monitoring import features

    factor = -(-side // 32)
    images = np.repeat(np.repeat(tiles[:12], factor, axis=1), factor, axis=2)[:, :side, :side]
    small = features._small_size(side, side)
    assert small == ((side, side) if side <= features.MAX_SIDE else (112, 112))
    if side > features.MAX_SIDE:  # chunked by the 112-px copies: 5 images at a time
        assert features.CHUNK_PIXELS // (small[0] * small[1]) == 5
    together = image_features(images)
    one_by_one = np.concatenate([image_features(images[i:i + 1]) for i in range(len(images))])
    np.testing.assert_array_equal(together, one_by_one)


def test_checks_pass_reference_and_catch_blur_stain_background_and_ratio(tiles, profile):
    assert sum(bool(f) for f in assess(he_tiles(120, 32, seed=5)[0], profile).failed) <= 3
    assert all("out_of_focus" in f for f in assess(blur(tiles[:40]), profile).failed)
    assert sum("stain" in f for f in assess(stain_shift(tiles[:40]), profile).failed) >= 10
    background = np.full((3, 32, 32, 3), 240, np.uint8)
    assert all("background" in f for f in assess(background, profile).failed)
    wide = assess(tiles[:2], profile, aspect_ratios=np.array([4 / 3, 3.0]))
    assert "size_ratio" not in wide.failed[0] and "size_ratio" in wide.failed[1]
    assert assess(tiles[:2], None).failed == [(), ()]  # no profile, no checks


def test_profile_round_trip_and_checksum(tmp_path, profile):
    (tmp_path / PROFILE_FILE).write_text(profile.to_json())
    reference = file_reference(tmp_path / PROFILE_FILE)
    loaded = load_profile(tmp_path, reference)
    assert loaded == ReferenceProfile.from_dict(json.loads(profile.to_json()))
    assert load_profile(tmp_path, None) is None
    (tmp_path / PROFILE_FILE).write_text(profile.to_json().replace("out_of_focus", "out_of_focuz"))
    with pytest.raises(ProfileError, match="SHA-256"):
        load_profile(tmp_path, reference)
    with pytest.raises(ProfileError, match="invalid profile file"):
        load_profile(tmp_path, {"file": "../x.json", "sha256": "0"})


def test_uncertainty_band_holds_the_requested_share():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    probabilities = np.column_stack([1 - p, p])
    low, high = uncertainty_band(probabilities, 0.4, 1, 0.1)
    assert low < 0.4 < high
    assert uncertain(probabilities, (low, high), 1).mean() == pytest.approx(0.1, abs=0.01)
    low, high = uncertainty_band(rng.dirichlet(np.ones(3), size=500), None, None, 0.2)
    assert low == 0.0 and 0.3 < high < 0.7


def test_psi_is_small_for_the_reference_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = np.full(10, 0.1)
    same = np.bincount(rng.integers(0, 10, 2000), minlength=10)
    assert psi(same, reference) < 0.02
    shifted = np.bincount(rng.integers(7, 10, 2000), minlength=10)
    assert psi(shifted, reference) > 1.0


def test_row_window_gives_the_last_n_and_the_last_seconds():
    now = [1000.0]
    window = RowWindow(columns=2, capacity=6, clock=lambda: now[0])
    for value in range(8):  # wraps around the ring buffer
        window.add(np.array([[value, -value]], dtype=float))
        now[0] += 10
    assert window.last(3)[:, 0].tolist() == [5, 6, 7]
    assert window.last(100)[:, 0].tolist() == [2, 3, 4, 5, 6, 7]  # capacity bounds everything
    assert sorted(window.since(25)[:, 0].tolist()) == [6, 7]
    window.add(np.arange(20, dtype=float).reshape(10, 2))  # more rows than capacity at once
    assert window.last(6)[:, 0].tolist() == [8, 10, 12, 14, 16, 18]


def test_outcomes_match_scikit_learn_and_stay_bounded():
    rng = np.random.default_rng(1)
    true, predicted = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    outcomes = Outcomes(size=1000, positive_class=1)
    for i, (p, t) in enumerate(zip(predicted, true)):
        outcomes.add((f"r{i}", 0), int(p), int(t))
    rates = outcomes.rates()
    assert rates["sensitivity"] == pytest.approx(recall_score(true, predicted, pos_label=1))
    assert rates["specificity"] == pytest.approx(recall_score(true, predicted, pos_label=0))
    small = Outcomes(size=10, positive_class=1)
    for i in range(25):
        small.add((f"r{i}", 0), 1, 1)
    assert small.rates()["labels"] == 10
    log = PredictionLog(capacity=3)
    log.remember("a", [Prediction("m", 1, 0), Prediction("m", 1, 1)])
    log.remember("b", [Prediction("m", 1, 1), Prediction("m", 1, 0)])
    assert log.find("a", 0) is None and log.find("a", 1).predicted == 1 and log.find("b", 1).predicted == 0
