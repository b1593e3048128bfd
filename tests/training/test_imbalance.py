"""Balanced class weights, random oversampling and SMOTE on the training split only."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from histoedge.training.config import ConfigError
from histoedge.training.imbalance import (apply_imbalance, balanced_class_weights, random_oversample,
                                smote_oversample)


def imbalanced(counts, size=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("counts", [[31, 69], [5, 12, 40]])
def test_balanced_class_weights_match_sklearn(counts):
    _, labels = imbalanced(counts)
    want = compute_class_weight("balanced", classes=np.arange(len(counts)), y=labels)
    got = balanced_class_weights(labels, len(counts))
    np.testing.assert_allclose([got[c] for c in range(len(counts))], want)
    # the seed's BreakHis numbers: about {benign: 1.58, malignant: 0.73}
    if counts == [31, 69]:
        assert got[0] == pytest.approx(1.61, abs=0.01) and got[1] == pytest.approx(0.72, abs=0.01)


@pytest.mark.parametrize("method", ["smote", "random"])
def test_oversampling_balances_every_class(method):
    images, labels = imbalanced([6, 20, 11])
    original = images.copy()
    out_images, out_labels, weights = apply_imbalance("oversample", images, labels, 3, method=method)
    assert weights is None
    assert np.bincount(out_labels).tolist() == [20, 20, 20]
    assert out_images.dtype == np.uint8 and out_images.shape == (60, 8, 8, 3)
    np.testing.assert_array_equal(images, original)  # input untouched
    # the original images are all still there
    assert all(any(np.array_equal(img, o) for o in out_images) for img in images[:6])


def test_smote_makes_blends_of_same_class_images_and_random_only_duplicates():
    images, labels = imbalanced([4, 10])
    smote_images, smote_labels = smote_oversample(images, labels, seed=0)
    synthetic = smote_images[len(images):]
    assert (smote_labels[len(images):] == 0).all() and len(synthetic) == 6
    minority = images[labels == 0].reshape(4, -1).astype(float)
    for img in synthetic.reshape(6, -1).astype(float):
        assert not any(np.array_equal(img, m) for m in minority)  # new pixels
        assert (img >= minority.min(0) - 1).all() and (img <= minority.max(0) + 1).all()
    random_images, _ = random_oversample(images, labels, seed=0)
    flat = {img.tobytes() for img in images}
    assert all(img.tobytes() in flat for img in random_images)


def test_validation_data_never_enters_the_sampler():
    train_images, train_labels = imbalanced([3, 9], seed=1)
    val_images, _ = imbalanced([3, 9], seed=2)
    out_images, _, _ = apply_imbalance("oversample", train_images, train_labels, 2, method="random")
    val_set = {img.tobytes() for img in val_images}
    assert not any(img.tobytes() in val_set for img in out_images)


def test_none_and_class_weight_strategies_keep_the_data_and_bad_names_fail():
    images, labels = imbalanced([3, 9])
    same_images, same_labels, weights = apply_imbalance("none", images, labels, 2)
    assert same_images is images and weights is None
    _, _, weights = apply_imbalance("class_weight", images, labels, 2)
    assert weights == pytest.approx({0: 2.0, 1: 12 / 18})
    with pytest.raises(ConfigError, match="oversample_method"):
        apply_imbalance("oversample", images, labels, 2, method="adasyn")
    with pytest.raises(ConfigError, match="imbalance must be one of"):
        apply_imbalance("undersample", images, labels, 2)
