"""Grad-CAM maps: the tile's shape, not constant, on the member CNN; example picking."""

from __future__ import annotations

import numpy as np

from histoedge.training.saliency import grad_cam, overlay, pick_examples


def test_grad_cam_maps_have_the_tiles_shape_and_are_not_constant():
    import keras

    from histoedge.training.config import CNNConfig
    from histoedge.training.models.cnn import build_cnn, channel_statistics

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = np.full((64, 32, 32, 3), (225, 170, 210), np.uint8)
    labels = np.arange(64) % 2
    for image, label in zip(images, labels):  # class = which half holds the dark blob
        x, y = rng.integers(2, 10), rng.integers(2, 24)
        image[y:y + 6, x + 16 * label:x + 16 * label + 6] = (60, 20, 120)
    model = build_cnn(CNNConfig(filters=[8, 16], dense_units=[8], block_dropout=[0, 0]), 2, 32,
                      channel_statistics(images))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, epochs=10, batch_size=16, verbose=0)
    images = images[:6]
    maps = grad_cam(model, images, model.predict(images.astype(np.float32), verbose=0).argmax(axis=1))
    assert maps.shape == (6, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    # Grad-CAM keeps the positive part: a map may vanish, but most must show structure
    assert sum(cam.std() > 1e-2 and cam.max() == 1.0 for cam in maps) >= 4
    shown = overlay(images[0], maps[0])
    assert shown.shape == images[0].shape and shown.dtype == np.uint8


def test_pick_examples_takes_the_most_confident_right_and_wrong_per_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.05, 0.95], [0.7, 0.3]])
    predicted = probabilities.argmax(axis=1)
    assert pick_examples(labels, probabilities, predicted) == [(0, "right"), (2, "wrong"), (4, "right"), (5, "wrong")]


def test_grad_cam_reaches_into_a_nested_backbone():
    # A Keras Applications backbone is a nested model: its feature maps must be taken from the
    # outer graph's call, or the explaining model is disconnected from the inputs.
    from histoedge.training.config import load_config
    from histoedge.training.models.backbones import build_model

    config = load_config(overrides=["model.backbone=mobilenetv3small", "model.dense_units=[]"], image_size=64)
    model = build_model(config.model, 2, 64)
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3)).astype(np.uint8)
    maps = grad_cam(model, images, 1)
    assert maps.shape == (3, 64, 64) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
