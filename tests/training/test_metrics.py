"""Metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn import metrics as skm

from histoedge.training.metrics import (average_precision, bootstrap_intervals, classification_metrics,
                              expected_calibration_error, evaluate, roc_auc)


def _binary_case(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    p1 = np.round(p1, 2)  # ties exercise the tie handling
    return y, np.stack([1 - p1, p1], axis=1)


def test_binary_metrics_match_sklearn():
    y, p = _binary_case()
    m = classification_metrics(y, p, threshold=0.4)
    pred = (p[:, 1] >= 0.4).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["threshold"] == 0.4


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, p, classes=["a", "b", "c"])
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    expected_ap = np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(3)])
    assert m["pr_auc"] == pytest.approx(expected_ap)
    assert set(m["per_class"]) == {"a", "b", "c"}
    assert m["per_class"]["b"]["recall"] == pytest.approx(skm.recall_score(y, pred, average=None)[1])
    assert m["per_class"]["c"]["support"] == int((y == 2).sum())


def test_ece_hand_example():
    # Confidences 0.9, 0.9 (one right, one wrong) and 0.6 (right): bins (0.8667,0.9333] and (0.5333,0.6]
    y = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(np.array([0, 1]), perfect) == 0.0


def test_auc_undefined_with_one_class_is_none():
    y = np.ones(5, dtype=int)
    p = np.tile([0.2, 0.8], (5, 1))
    m = classification_metrics(y, p)
    assert m["roc_auc"] is None
    assert np.isnan(roc_auc(y == 1, p[:, 1]))
    assert average_precision(y == 1, p[:, 1]) == pytest.approx(1.0)


def test_bootstrap_intervals_contain_estimate_and_are_seeded():
    y, p = _binary_case(120)
    ci = bootstrap_intervals(y, p, threshold=0.5, rounds=200, seed=3)
    again = bootstrap_intervals(y, p, threshold=0.5, rounds=200, seed=3)
    point = classification_metrics(y, p, threshold=0.5)
    assert ci == again
    for name in ("accuracy", "recall", "roc_auc", "ece"):
        low, high = ci[name]
        assert low <= point[name] <= high and low < high


def test_evaluate_is_json_serialisable():
    import json
    y, p = _binary_case(60)
    result = evaluate(y, p, threshold=0.3, bootstrap=50, seed=0)
    text = json.dumps(result)
    assert "ci" in json.loads(text) and result["bootstrap_rounds"] == 50
