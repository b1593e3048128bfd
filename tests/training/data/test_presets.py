"""Safe stain jitter on extreme inputs, augmentation presets and the auto preset chosen from the data."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import tensorflow as tf

from histoedge.training.config import load_config
from histoedge.training.data import DataError, load_dataset
from histoedge.training.data.augment import OD_DARK, PRESETS, AugmentConfig, _augment, stain_jitter
from histoedge.training.data.profile import choose_preset, colour_profile, resolve_augmentation

SEED = tf.constant([3, 4], tf.int64)


def _batch(*colours, size=8):
    return np.stack([np.full((size, size, 3), c, np.float32) for c in colours])


def _he_like(n=6, size=16, seed=0):
    """Pixels mixed from the haematoxylin and eosin optical densities, background in between."""
    from histoedge.training.data.augment import RGB_FROM_HED

    rng = np.random.default_rng(seed)
    amounts = rng.uniform(0.0, 1.2, (n, size, size, 2))
    od = amounts @ RGB_FROM_HED[:2]
    od[:, ::4, ::4] = 0.0  # some white background
    return np.clip(256 * np.exp(-od) - 1, 0, 255).astype(np.float32)


JITTERS = [(0.15, 0.0), (0.9, 0.0), (0.15, 0.2), (0.0, 0.6), (0.9, 0.9)]  # (strength, vectors)


@pytest.mark.parametrize("strength, vectors", JITTERS)
def test_stain_jitter_leaves_black_white_and_saturated_pixels_alone(strength, vectors):
    extremes = _batch((0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
                      (0, 255, 255), (5, 3, 8), (250, 252, 251))
    out = stain_jitter(tf.constant(extremes), strength, SEED, vectors).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, extremes)


@pytest.mark.parametrize("strength, vectors", JITTERS)
def test_stain_jitter_keeps_tissue_and_grayscale_plausible(strength, vectors):
    tissue = _he_like()
    gray = _batch(*[(v, v, v) for v in (30, 80, 128, 200)], size=16)
    for images in (tissue, gray):
        out = stain_jitter(tf.constant(images), strength, SEED, vectors).numpy()
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255
        # A jittered pixel stays inside the optical densities stained tissue can have...
        changed = np.abs(out - images).max(-1) > 0.5
        assert (out[changed] >= 256 * np.exp(-OD_DARK[1]) - 1 - 1e-3).all()
        # ...and its change is bounded by the strength (optical density moves by at most ~2 * strength
        # times the density plus the offset), so nothing turns into a wild colour.
        od_in, od_out = (-np.log((x + 1) / 256) for x in (images, out))
        # (a stain vector tilted by up to ``vectors`` per component moves it by less than 2 * vectors)
        bound = 2.5 * (strength + vectors) * max(1.0, od_in.max())
        assert np.abs(od_out - od_in).max() <= bound + 1e-3
    moved = stain_jitter(tf.constant(tissue), strength, SEED, vectors).numpy()
    assert np.abs(moved - tissue).mean() > 1.0  # it still jitters tissue


def test_stain_vector_jitter_changes_the_hue_of_a_stain_not_its_amount():
    """With only the vectors jittered, a pure-haematoxylin pixel keeps its optical density's length.

    Its direction (the stain's hue) turns, by a bounded angle, differently in each image: another
    lab's haematoxylin of the same concentration.
    """
    from histoedge.training.data.augment import RGB_FROM_HED

    amounts = np.linspace(0.3, 1.5, 16, dtype=np.float32)
    od = amounts[None, :, None, None] * RGB_FROM_HED[0][None, None, None, :].astype(np.float32)
    images = np.repeat(np.clip(256 * np.exp(-od) - 1, 0, 255), 8, axis=0)  # [8, 16, 1, 3]
    images = np.repeat(images, 16, axis=2)
    out = stain_jitter(tf.constant(images), 0.0, SEED, 0.2).numpy()
    od_in, od_out = (-np.log((x + 1) / 256) for x in (images, out))
    np.testing.assert_allclose(np.linalg.norm(od_out, axis=-1), np.linalg.norm(od_in, axis=-1), rtol=0.02)
    cosine = (od_in * od_out).sum(-1) / np.linalg.norm(od_in, axis=-1) / np.linalg.norm(od_out, axis=-1)
    angles = np.degrees(np.arccos(np.clip(cosine[:, 8, 8], -1, 1)))  # one pixel of each image
    assert angles.max() < 35 and angles.max() > 3  # turned, within what 0.2 per component allows
    assert len(np.unique(np.round(angles, 2))) == len(angles)  # a different stain for each image
    # within an image every pixel of the stain turns the same way (one lab, one haematoxylin)
    assert np.ptp(cosine[0, 2:]) < 0.01


def test_whole_augmentation_chain_is_finite_on_extreme_inputs():
    images = np.concatenate([_batch((0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 0, 255), size=16),
                             np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)])
    config = AugmentConfig(preset="histology", stain=0.9, brightness=0.5, contrast=0.9)
    # eager (no XLA compile, which costs tens of seconds); augment_batch compiles the same function
    out = _augment(tf.constant(images), tf.constant([1, 2], tf.int64), config).numpy()
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255


def test_presets_and_explicit_keys_override_them():
    assert AugmentConfig.preset_config("histology") == AugmentConfig(preset="histology", **PRESETS["histology"])
    generic = AugmentConfig.preset_config("generic")
    assert generic.stain == 0 and generic.stain_vectors == 0
    assert not generic.horizontal_flip and not generic.vertical_flip
    assert 0 < AugmentConfig.preset_config("histology").stain_vectors < 0.5
    assert 0 < generic.rotation <= 15 and generic.zoom > 0 and generic.width_shift > 0
    none = AugmentConfig.none()
    assert none.preset == "none" and not none.geometric and none.stain == 0 and none.brightness == 0
    # every key still overrides its preset, in a config file or --set
    config = load_config(overrides=["augmentation.preset=generic", "augmentation.vertical_flip=true",
                                    "augmentation.stain=0.05"])
    resolved = config.augmentation.resolved()
    assert resolved.preset == "generic" and resolved.vertical_flip is True and resolved.stain == 0.05
    assert resolved.zoom == PRESETS["generic"]["zoom"] and resolved.horizontal_flip is False
    assert AugmentConfig(rotation=5.0).resolved("none").rotation == 5.0
    with pytest.raises(DataError, match="augmentation.preset must be one of auto, histology, generic, none"):
        load_config(overrides=["augmentation.preset=tissue"])
    with pytest.raises(DataError, match="true or false"):
        AugmentConfig(horizontal_flip=1)
    with pytest.raises(DataError, match=r"augmentation.stain_vectors must be in \[0, 1\)"):
        load_config(overrides=["augmentation.stain_vectors=1.5"])
    tilted = AugmentConfig(stain_vectors=0.1)
    assert AugmentConfig.from_config(tilted.get_config()) == tilted


def test_stain_zero_switches_the_whole_stain_jitter_off_hue_included():
    tissue = tf.constant(_he_like())
    seed = tf.constant([1, 2], tf.int64)
    off = AugmentConfig(preset="none", stain=0.0, stain_vectors=0.5)
    np.testing.assert_array_equal(_augment(tissue, seed, off).numpy(), tissue.numpy())
    hue_only = AugmentConfig(preset="none", stain=1e-6, stain_vectors=0.5)
    assert np.abs(_augment(tissue, seed, hue_only).numpy() - tissue.numpy()).mean() > 1.0


def _write(folder, images):
    for c, group in enumerate(images):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(group):
            cv2.imwrite(str(folder / f"c{c}" / f"{i}.png"), cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR))
    return folder


def test_non_he_data_gets_the_generic_preset(tmp_path, caplog):
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (2, 6, 16, 16, 1)), 3, axis=-1)
    # photograph-like colours: sky blue, foliage green, brick red; IHC brown (DAB) absorbs blue most
    photo = np.stack([_batch((110, 160, 230), (60, 140, 50), (180, 60, 40), (150, 100, 50), (200, 180, 90),
                             (70, 90, 140), size=16) for _ in range(2)]) + rng.integers(-10, 10, (2, 6, 16, 16, 3))
    he = np.stack([_he_like(6, seed=1), _he_like(6, seed=2)])
    expected = {"gray": ("generic", "grayscale"), "photo": ("generic", "far from H&E"), "he": ("histology", "H&E-like")}
    for name, images in (("gray", gray), ("photo", np.clip(photo, 0, 255)), ("he", he)):
        dataset = load_dataset(_write(tmp_path / name, images), image_size=16)
        preset, reason = choose_preset(dataset.images)
        assert (preset, expected[name][1] in reason) == (expected[name][0], True), (name, reason)
        with caplog.at_level(logging.INFO):
            caplog.clear()
            resolved = resolve_augmentation(AugmentConfig(), dataset.images)
        assert resolved.preset == expected[name][0] and resolved.is_resolved
        assert [r.getMessage() for r in caplog.records if "preset" in r.getMessage()] == \
            [f"augmentation preset {preset} (auto): {reason}"]
        # an explicit preset always wins
        assert resolve_augmentation(AugmentConfig(preset="histology"), dataset.images).preset == "histology"
    assert colour_profile(gray.reshape(-1, 16, 16, 3)).grayscale_fraction == 1.0


def test_synthetic_he_tiles_get_the_histology_preset(tmp_path):
    from histoedge.training.data import generate_synthetic

    generate_synthetic(tmp_path / "synth", n=40, size=32, patients=8, seed=1)
    assert choose_preset(load_dataset(tmp_path / "synth", image_size=32).images)[0] == "histology"
