"""Meta-learners, threshold selection and ensemble.json round trip."""

import json

import numpy as np
import pytest

from histoedge import HistoedgeError
from histoedge.training.ensemble import Ensemble, choose_threshold, fit_ensemble, stack_features


def _members(n, n_classes=2, m=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    probs = []
    for k in range(m):
        logits = rng.normal(size=(n, n_classes)) + (1.0 + k) * np.eye(n_classes)[y]
        probs.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    return y, probs


def test_threshold_hits_target_sensitivity_and_is_highest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.clip(0.4 * y + rng.random(300) * 0.6, 0, 1)
    for target in (0.8, 0.9, 0.95, 1.0):
        t = choose_threshold(y, scores, target)
        assert np.mean(scores[y == 1] >= t) >= target
        higher = np.nextafter(t, 2.0)
        assert np.mean(scores[y == 1] >= higher) < target


def test_threshold_needs_positives():
    with pytest.raises(HistoedgeError):
        choose_threshold(np.zeros(4, int), np.ones(4), 0.95)


def test_stacking_features_are_member_major():
    a = np.array([[0.1, 0.9]])
    b = np.array([[0.3, 0.7]])
    assert stack_features([a, b]).tolist() == [[0.1, 0.9, 0.3, 0.7]]


@pytest.mark.parametrize("method", ["stacking", "soft_vote", "single"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_json_round_trip_gives_identical_probabilities(tmp_path, method, n_classes):
    y, probs = _members(120, n_classes)
    if method == "single":
        probs = probs[:1]
    names = [f"m{i}" for i in range(len(probs))]
    classes = ["a", "b", "c"][:n_classes]
    ensemble = fit_ensemble(method, members=names, val_probs=probs, val_labels=y, classes=classes, image_size=32)
    ensemble.save(tmp_path / "ensemble.json")
    raw = json.loads((tmp_path / "ensemble.json").read_text())
    assert set(raw) == {"method", "members", "classes", "image_size", "positive_class", "threshold",
                        "target_sensitivity", "stacking", "soft_vote"}
    loaded = Ensemble.load(tmp_path / "ensemble.json")
    _, test_probs = _members(50, n_classes, seed=9)
    test_probs = test_probs[:len(probs)]
    np.testing.assert_array_equal(loaded.predict_proba(test_probs), ensemble.predict_proba(test_probs))
    out = loaded.predict_proba(test_probs)
    np.testing.assert_allclose(out.sum(1), 1.0)
    if n_classes == 2:
        assert raw["positive_class"] == 1 and 0 <= raw["threshold"] <= 1
    else:
        assert raw["positive_class"] is None and raw["threshold"] is None
    if method == "stacking":
        coef = np.asarray(raw["stacking"]["coef"])
        assert coef.shape == ((1 if n_classes == 2 else n_classes), len(probs) * n_classes)
        assert raw["stacking"]["multi_class"] == ("binary" if n_classes == 2 else "multinomial")


def test_stacking_matches_documented_formula():
    y, probs = _members(100)
    e = fit_ensemble("stacking", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                     classes=["benign", "malignant"], image_size=32)
    x = stack_features(probs)
    p1 = 1 / (1 + np.exp(-(x @ np.array(e.stacking["coef"][0]) + e.stacking["intercept"][0])))
    np.testing.assert_allclose(e.predict_proba(probs)[:, 1], p1)


def test_soft_vote_weights_sum_to_one_and_favour_the_best_member():
    y, probs = _members(400, m=3)
    e = fit_ensemble("soft_vote", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                     classes=["benign", "malignant"], image_size=32)
    w = np.array(e.soft_vote["weights"])
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w.argmax() == 2  # member 2 has the strongest signal
    uniform = fit_ensemble("soft_vote", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                           classes=["benign", "malignant"], image_size=32, fit_weights=False)
    assert uniform.soft_vote["weights"] == pytest.approx([1 / 3] * 3)


def test_threshold_is_chosen_on_validation_predictions():
    y, probs = _members(200)
    e = fit_ensemble("stacking", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                     classes=["benign", "malignant"], image_size=32, target_sensitivity=0.9)
    p1 = e.predict_proba(probs)[:, 1]
    assert np.mean(p1[y == 1] >= e.threshold) >= 0.9
    assert e.threshold == choose_threshold(y, p1, 0.9)


def test_bad_json_and_methods_raise_histoedge_error(tmp_path):
    (tmp_path / "e.json").write_text('{"method": "vote"}')
    with pytest.raises(HistoedgeError):
        Ensemble.load(tmp_path / "e.json")
    with pytest.raises(HistoedgeError):
        Ensemble.load(tmp_path / "missing.json")
    y, probs = _members(30)
    with pytest.raises(HistoedgeError):
        fit_ensemble("boosting", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                     classes=["x", "y"], image_size=32)
    with pytest.raises(HistoedgeError):
        fit_ensemble("stacking", members=["a", "b", "c"], val_probs=probs, val_labels=np.zeros(30, int),
                     classes=["x", "y"], image_size=32)


def _suppressor_members(n=600, seed=0):
    """Member a sees the label through noise; member b sees only a's noise, so a free fit weights b negatively."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    noise = rng.normal(0, 1.5, n)

    def probs(logit):
        p1 = 1 / (1 + np.exp(-logit))
        return np.stack([1 - p1, p1], axis=1)

    return y, [probs(2.0 * (2 * y - 1) + noise), probs(noise)]


def test_member_support_matches_hand_computed_values():
    from histoedge.training.ensemble import member_support

    # binary: one row of weights for class 1; support is (w_c1 - w_c0) / 2 per member
    np.testing.assert_allclose(member_support([[-1.0, 1.0, 0.5, -0.5]], 2, 2), [1.0, -0.5])
    # three classes, one member: the identity votes for each class it names; its transpose as well
    np.testing.assert_allclose(member_support(np.eye(3), 1, 3), [2.0])
    np.testing.assert_allclose(member_support(-np.eye(3), 1, 3), [-2.0])


def test_free_stacking_counts_a_member_against_its_class_and_non_negative_drops_it():
    from histoedge.training.ensemble import member_support

    y, probs = _suppressor_members()
    free = fit_ensemble("stacking", members=["a", "b"], val_probs=probs, val_labels=y, classes=["benign", "malignant"],
                        image_size=32, stacking_weights="free")
    assert member_support(free.stacking["coef"], 2, 2)[1] < -0.5
    kept = fit_ensemble("stacking", members=["a", "b"], val_probs=probs, val_labels=y, classes=["benign", "malignant"],
                        image_size=32)
    coef = np.array(kept.stacking["coef"])
    assert coef.shape == (1, 4) and np.all(coef[0, 2:] == 0) and member_support(coef, 2, 2)[0] > 0
    # the dropped member changes nothing: the ensemble ranks images as member a alone does
    order = np.argsort(kept.predict_proba(probs)[:, 1], kind="stable")
    assert np.all(np.diff(probs[0][order, 1]) >= -1e-12)


def test_non_negative_stacking_keeps_an_unconstrained_fit_when_every_member_helps():
    y, probs = _members(300, n_classes=3)
    free = fit_ensemble("stacking", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                        classes=["x", "y", "z"], image_size=32, stacking_weights="free")
    kept = fit_ensemble("stacking", members=["a", "b", "c"], val_probs=probs, val_labels=y,
                        classes=["x", "y", "z"], image_size=32)
    np.testing.assert_allclose(kept.stacking["coef"], free.stacking["coef"])


def test_unknown_stacking_weights_are_refused():
    from histoedge.training.ensemble import fit_stacking

    y, probs = _members(50)
    with pytest.raises(HistoedgeError, match="stacking weights"):
        fit_stacking(probs, y, weights="positive")
