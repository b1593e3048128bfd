"""The tf.data pipeline and the batched augmentations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from histoedge.training.data import DataError
from histoedge.training.data.augment import AugmentConfig, apply_affine, augment_batch, stain_jitter
from histoedge.training.data.pipeline import make_tf_dataset


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    return images, labels


def _collect(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def test_evaluation_batches_are_the_inputs_unchanged(data):
    images, labels = data
    dataset = make_tf_dataset(images, labels, 3, batch_size=16, training=False)
    assert dataset.element_spec[0].dtype == tf.float32
    batches = list(dataset)
    assert [len(x) for x, _ in batches] == [16, 16, 8]
    x, y = _collect(dataset)
    assert x.dtype == np.float32 and x.shape == (40, 16, 16, 3)
    assert np.array_equal(x, images.astype(np.float32))  # no augmentation, order kept
    assert y.dtype == np.float32 and y.shape == (40, 3)
    assert np.array_equal(y, np.eye(3, dtype=np.float32)[labels])


def test_training_batches_are_shuffled_and_augmented(data):
    images, labels = data
    x, y = _collect(make_tf_dataset(images, labels, 3, batch_size=8, training=True, seed=1))
    assert x.shape == (40, 16, 16, 3) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 255
    assert np.array_equal(y.sum(1), np.ones(40)) and sorted(y.argmax(1)) == sorted(labels)
    originals = {im.tobytes() for im in images.astype(np.float32)}
    assert not any(im.tobytes() in originals for im in x)


def test_training_without_augmentation_only_shuffles(data):
    images, labels = data
    x, y = _collect(make_tf_dataset(images, labels, 3, batch_size=8, training=True,
                                    augment=AugmentConfig.none(), seed=1))
    order = [int(np.flatnonzero((images == im.astype(np.uint8)).all(axis=(1, 2, 3)))[0]) for im in x]
    assert sorted(order) == list(range(40)) and order != list(range(40))
    assert np.array_equal(y.argmax(1), labels[order])


def test_same_seed_same_batches_new_epoch_new_augmentation(data):
    images, labels = data
    first = make_tf_dataset(images, labels, 3, batch_size=8, training=True, seed=7)
    second = make_tf_dataset(images, labels, 3, batch_size=8, training=True, seed=7)
    epoch1, again = _collect(first), _collect(second)
    assert np.array_equal(epoch1[0], again[0]) and np.array_equal(epoch1[1], again[1])
    epoch2 = _collect(first)
    assert not np.array_equal(epoch1[0], epoch2[0])
    other = _collect(make_tf_dataset(images, labels, 3, batch_size=8, training=True, seed=8))
    assert not np.array_equal(epoch1[0], other[0])


def test_flip_only_config_is_an_exact_flip():
    image = np.arange(4 * 5 * 3, dtype=np.float32).reshape(1, 4, 5, 3)
    config = AugmentConfig.from_config({**AugmentConfig.none().get_config(),
                                        "horizontal_flip": True})
    outputs = [augment_batch(image, config, tf.constant([s, 0], tf.int64)).numpy()[0]
               for s in range(12)]
    assert all(np.array_equal(o, image[0]) or np.array_equal(o, image[0, :, ::-1])
               for o in outputs)
    assert any(np.array_equal(o, image[0, :, ::-1]) for o in outputs)


@pytest.mark.parametrize("fill_mode", ["reflect", "nearest", "constant"])
def test_affine_resampling_matches_tensorflow_kernel(fill_mode):
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 255, (3, 9, 7, 3)).astype(np.float32))
    transforms = tf.constant([[1, 0, 0, 0, 1, 0, 0, 0],  # identity
                              [-1, 0, 6, 0, 1, -2.5, 0, 0],  # flip and shift out of the image
                              [0.8, 0.3, -1.2, -0.2, 1.1, 0.7, 0, 0]], tf.float32)
    expected = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[9, 7], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=fill_mode.upper())
    got = apply_affine(images, transforms, fill_mode)
    assert np.allclose(got.numpy(), expected.numpy(), atol=1e-3)


def test_stain_jitter_changes_colour_and_keeps_range():
    rng = np.random.default_rng(0)
    pinkish = np.clip(rng.normal((220, 150, 200), 20, (8, 16, 16, 3)), 0, 255).astype(np.float32)
    extremes = np.concatenate([pinkish, np.zeros((1, 16, 16, 3), np.float32),
                               np.full((1, 16, 16, 3), 255, np.float32)])
    out = stain_jitter(tf.constant(extremes), 0.2, tf.constant([3, 4], tf.int64)).numpy()
    assert out.min() >= 0 and out.max() <= 255
    colour_shift = np.abs(out[:8].mean((1, 2)) - pinkish.mean((1, 2)))
    assert colour_shift.max() > 2
    # per-channel changes differ, so hue changes, not only brightness
    assert np.ptp(colour_shift, axis=1).max() > 1
    identity = stain_jitter(tf.constant(pinkish), 0.0, tf.constant([3, 4], tf.int64)).numpy()
    assert np.allclose(identity, pinkish, atol=1e-2)


def test_augment_config_round_trip_and_validation():
    config = AugmentConfig(rotation=90.0, stain=0.1)
    assert AugmentConfig.from_config(config.get_config()) == config
    assert AugmentConfig().get_config()["rotation"] is None  # taken from the preset
    assert AugmentConfig().resolved().get_config()["rotation"] == 20.0
    with pytest.raises(DataError, match="unknown augmentation option"):
        AugmentConfig.from_config({"rotate": 3})
    with pytest.raises(DataError, match="zoom"):
        AugmentConfig(zoom=1.5)
    with pytest.raises(DataError, match=">= 0"):
        AugmentConfig(rotation=-1.0)
    with pytest.raises(DataError, match="fill_mode"):
        AugmentConfig(fill_mode="wrap")


def test_bad_inputs_raise_data_error(data):
    images, labels = data
    with pytest.raises(DataError, match="labels must lie"):
        make_tf_dataset(images, labels, 2, batch_size=4, training=False)
    with pytest.raises(DataError, match="same, non-zero number"):
        make_tf_dataset(images, labels[:5], 3, batch_size=4, training=False)


def test_importing_training_data_does_not_import_tensorflow():
    code = ("import sys, training.data as d; d.AugmentConfig(); d.load_dataset; d.split_dataset; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_augment_batch_handles_two_image_sizes_in_one_process():
    import numpy as np

    from histoedge.training.data.augment import AugmentConfig, augment_batch

    config = AugmentConfig()
    for size in (24, 40):
        images = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype("float32")
        out = augment_batch(images, config, seed=[1, 2]).numpy()
        assert out.shape == (2, size, size, 3)
        assert not np.allclose(out, images)
