"""Stain normalisation (export/stain.py): near-identity on its own reference, fallbacks, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histoedge.export.manifest import STAIN_KEY, Manifest, build_manifest
from histoedge.export.stain import StainError, StainReference, fit_reference, from_preprocessing
from tests.support.he_tiles import extreme_tiles, he_tiles

METHODS = ("density", "macenko", "reinhard")


@pytest.fixture(scope="module")
def tiles():
    return he_tiles(6, seed=0), he_tiles(6, seed=0, stain_shift=1.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_tile_against_its_own_reference_is_nearly_unchanged(tiles, method):
    tile = tiles[0][0]
    out, reason = fit_reference(method, tile).normalise(tile)
    assert reason is None and out.dtype == np.uint8 and out.shape == tile.shape
    diff = np.abs(out.astype(int) - tile)
    assert diff.mean() < 3.0 and np.percentile(diff, 95) <= 8


@pytest.mark.parametrize("method", ("macenko", "reinhard"))  # density keeps hues by design
def test_another_labs_stain_moves_towards_the_reference(tiles, method):
    normal, shifted = tiles
    reference = fit_reference(method, normal)
    before = np.abs(shifted.astype(int) - normal).mean()
    normalised, fallbacks = reference.normalise_batch(shifted)
    assert fallbacks == 0
    assert np.abs(normalised.astype(int) - reference.normalise_batch(normal)[0]).mean() < 0.75 * before


@pytest.mark.parametrize("factor", (0.6, 0.75, 1.4))
def test_density_brings_a_paler_or_darker_stain_run_back_and_keeps_hues(tiles, factor):
    """The same tissue stained weaker or stronger comes back to the reference's strength."""
    from histoedge.export.stain import MAX_DENSITY_SCALE, optical_density, rgb_from_od

    normal = tiles[0]
    reference = fit_reference("density", normal)
    scaled = np.stack([rgb_from_od(optical_density(t) * factor) for t in normal])
    own, _ = reference.normalise_batch(normal)
    out, fallbacks = reference.normalise_batch(scaled)
    assert fallbacks == 0
    before = np.abs(scaled.astype(int) - own).mean()
    assert np.abs(out.astype(int) - own).mean() < 0.25 * before
    # one factor per tile: the ratio of a pixel's densities (its hue) is kept
    od_in, od_out = optical_density(scaled[0]), optical_density(out[0])
    dark = od_in.sum(-1) > 1.0
    ratio_in = od_in[dark] / od_in[dark].sum(-1, keepdims=True)
    ratio_out = od_out[dark] / od_out[dark].sum(-1, keepdims=True)
    assert np.abs(ratio_in - ratio_out).max() < 0.03
    # never more than MAX_DENSITY_SCALE either way, however pale the tile
    faint = rgb_from_od(optical_density(normal[0]) * 0.2)
    faint_out, _ = reference.normalise(faint)
    gain = optical_density(faint_out).sum() / optical_density(faint).sum()
    assert gain <= MAX_DENSITY_SCALE + 0.05


@pytest.mark.parametrize("method", METHODS)
def test_extreme_tiles_are_left_as_they_are_and_reported(tiles, method):
    reference = fit_reference(method, tiles[0])
    for name, tile in extreme_tiles(tiles[0][0]).items():
        out, reason = reference.normalise(tile)
        if name == "eosin only" and method != "macenko":  # only Macenko needs two stains
            assert reason is None and out.dtype == np.uint8
            continue
        assert reason is not None, name
        assert np.array_equal(out, tile), name
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out, _reason = reference.normalise(noise)  # colourful nonsense: either way, finite uint8 pixels
    assert out.dtype == np.uint8 and out.shape == noise.shape


def test_fitting_on_tiles_without_tissue_is_a_clear_error(tiles):
    with pytest.raises(StainError, match="background"):
        fit_reference("macenko", np.full((2, 16, 16, 3), 250, np.uint8))
    with pytest.raises(StainError, match="density, macenko, reinhard"):
        fit_reference("vahadane", tiles[0])


@pytest.mark.parametrize("method", METHODS)
def test_the_reference_round_trips_through_the_manifest(tiles, method):
    reference = fit_reference(method, tiles[0])
    manifest = build_manifest(name="m", version=1, image_size=48, classes=("a", "b"), members=("x",),
                              sha256="0" * 64, stain=reference.to_dict())
    loaded = Manifest.from_dict(json.loads(manifest.to_json()))
    assert from_preprocessing(loaded.preprocessing) == reference
    assert np.array_equal(from_preprocessing(loaded.preprocessing).normalise(tiles[1][0])[0],
                          reference.normalise(tiles[1][0])[0])
    plain = build_manifest(name="m", version=1, image_size=48, classes=("a", "b"), members=("x",), sha256="0" * 64)
    assert STAIN_KEY not in plain.preprocessing and from_preprocessing(plain.preprocessing) is None


@pytest.mark.parametrize("bad", [{"method": "macenko", "stain_matrix": [[1, 0, 0]], "max_concentrations": [1, 1]},
                                 {"method": "reinhard", "lab_mean": [50, 0, 0], "lab_std": [1, 0, 1]},
                                 {"method": "reinhard", "lab_mean": [50, "x", 0], "lab_std": [1, 1, 1]},
                                 {"method": "macenko", "stain_matrix": [[float("nan")] * 3] * 2,
                                  "max_concentrations": [1, 1]},
                                 {"method": "density", "mean_density": -1.0}, {"method": "density"},
                                 {"method": "other"}, ["macenko"]])
def test_a_malformed_stored_reference_is_refused(bad):
    with pytest.raises(StainError):
        StainReference.from_dict(bad)
