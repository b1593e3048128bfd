"""Losses against numpy hand computations; registry and serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from histoedge.training import losses
from histoedge.training.config import ConfigError
from histoedge.training.losses.ldam import LDAMLoss, ldam_margins

Y = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
P = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.25, 0.25, 0.5], [0.8, 0.15, 0.05]], "float32")


def test_crossentropy_matches_numpy_and_smoothing_changes_it():
    plain = losses.get("crossentropy")
    want = np.mean(-np.log((Y * P).sum(1)))
    assert float(plain(Y, P)) == pytest.approx(want, rel=1e-5)
    smoothed = losses.get("crossentropy", label_smoothing=0.1)
    soft = Y * 0.9 + 0.1 / 3
    assert float(smoothed(Y, P)) == pytest.approx(np.mean(-(soft * np.log(P)).sum(1)), rel=1e-5)
    assert float(smoothed(Y, P)) != pytest.approx(want, rel=1e-3)


def test_focal_matches_numpy_scalar_and_per_class_alpha():
    focal = losses.get({"name": "focal", "alpha": 0.25, "gamma": 2.0})
    want = np.mean((Y * 0.25 * (1 - P) ** 2 * -np.log(P)).sum(1))
    assert float(focal(Y, P)) == pytest.approx(want, rel=1e-5)
    alpha = np.array([0.2, 0.3, 0.5], "float32")
    per_class = losses.get({"name": "focal", "alpha": alpha.tolist(), "gamma": 1.5}, num_classes=3)
    want = np.mean((Y * alpha * (1 - P) ** 1.5 * -np.log(P)).sum(1))
    assert float(per_class(Y, P)) == pytest.approx(want, rel=1e-5)
    # gamma 0 and alpha 1 is plain cross-entropy
    ce_like = losses.get({"name": "focal", "alpha": 1.0, "gamma": 0.0})
    assert float(ce_like(Y, P)) == pytest.approx(float(losses.get("crossentropy")(Y, P)), rel=1e-5)


def test_seed_margin_bce_matches_the_seed_formula():
    y = np.array([1.0, 0.0, 1.0, 0.0], "float32")
    p = np.array([0.8, 0.3, 0.4, 0.1], "float32")
    want = np.mean(-(y * np.log(p) * 1.4 + (1 - y) * np.log(1 - p)))
    loss = losses.get({"name": "seed_margin_bce", "m": 0.4})
    got = loss(np.stack([1 - y, y], 1), np.stack([1 - p, p], 1))
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_ldam_margins_against_hand_computed_values():
    margins = ldam_margins([100, 10], max_margin=0.5)
    raw = np.array([100 ** -0.25, 10 ** -0.25])
    np.testing.assert_allclose(margins, raw * 0.5 / raw.max(), rtol=1e-6)
    assert margins[1] == pytest.approx(0.5) and margins[0] == pytest.approx(0.5 * 10 ** -0.25, rel=1e-6)
    np.testing.assert_allclose(ldam_margins([16, 1, 81], 1.0), [0.5, 1.0, 1 / 3], rtol=1e-6)


def numpy_ldam(y, p, counts, max_margin, scale, weights=None):
    raw = np.asarray(counts, float) ** -0.25
    m = raw * max_margin / raw.max()
    z = scale * (np.log(p) - y * m)
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    per_sample = -(y * log_softmax).sum(1)
    if weights is not None:
        per_sample = per_sample * (y * weights).sum(1)
    return per_sample.mean()


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_ldam_loss_matches_numpy(scale):
    counts = [50, 20, 5]
    loss = losses.get({"name": "ldam", "max_margin": 0.5, "scale": scale}, class_counts=counts)
    assert isinstance(loss, LDAMLoss)
    assert float(loss(Y, P)) == pytest.approx(numpy_ldam(Y, P, counts, 0.5, scale), rel=1e-5)
    weights = np.array([0.5, 1.0, 1.5], "float32")
    loss.set_class_weights(weights)
    assert float(loss(Y, P)) == pytest.approx(numpy_ldam(Y, P, counts, 0.5, scale, weights), rel=1e-5)


def test_ldam_is_larger_than_crossentropy_and_needs_counts():
    counts = [100, 10, 10]
    assert float(losses.get("ldam", class_counts=counts)(Y, P)) > float(losses.get("crossentropy")(Y, P))
    with pytest.raises(ConfigError, match="class_counts"):
        losses.get("ldam")


def test_registry_and_serialisation_round_trip():
    assert losses.names() == ["crossentropy", "distillation", "focal", "ldam", "seed_margin_bce"]
    with pytest.raises(ConfigError, match="known losses: crossentropy, distillation, focal, ldam, seed_margin_bce"):
        losses.get("hinge")
    with pytest.raises(ConfigError, match="unknown key 'gama'"):
        losses.get({"name": "focal", "gama": 2})
    for loss in (losses.get("crossentropy", num_classes=3, label_smoothing=0.1),
                 losses.get({"name": "focal", "gamma": 3.0}, num_classes=3),
                 losses.get({"name": "ldam", "scale": 2.0}, class_counts=[30, 10, 5]),
                 losses.get({"name": "seed_margin_bce", "m": 0.3}, num_classes=3)):
        config = losses.serialize(loss)
        again = losses.get(config)
        assert type(again) is type(loss)
        assert float(again(Y, P)) == pytest.approx(float(loss(Y, P)), rel=1e-6)
        # the Keras serialiser finds it by its registered name too
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert float(restored(Y, P)) == pytest.approx(float(loss(Y, P)), rel=1e-6)
        assert keras.saving.get_registered_name(type(loss)).startswith("histoedge>")
