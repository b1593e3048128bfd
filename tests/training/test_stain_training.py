"""Training normalises its images with the same code and reference the server uses: same pixels."""

from __future__ import annotations

import types

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from histoedge.export.stain import STAIN_FILE, load_run_reference
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.runtime import ModelVersion
from histoedge.serving.settings import ServerSettings
from histoedge.training.config import load_config
from histoedge.training.data.stain import normalise_dataset
from histoedge.training.errors import ConfigError
from tests.support.he_tiles import extreme_tiles, he_tiles
from tests.support.model_packages import write_model_version

SIZE = 32


@pytest.mark.parametrize("method", ["density", "macenko"])
def test_training_and_serving_produce_the_same_pixels(tmp_path, method):
    images = np.concatenate([he_tiles(5, size=SIZE, seed=1), he_tiles(3, size=SIZE, seed=2, stain_shift=1.0),
                             np.stack(list(extreme_tiles(he_tiles(1, size=SIZE)[0]).values())[:3])])
    dataset = types.SimpleNamespace(images=images.copy())
    config = load_config(None, [f"preprocess.stain_normalisation={method}"], image_size=SIZE)
    reference = normalise_dataset(config, dataset, np.arange(5), tmp_path / "run")
    assert load_run_reference(tmp_path / "run") == reference
    assert not np.array_equal(dataset.images[:8], images[:8])
    assert np.array_equal(dataset.images[8:], images[8:])  # extremes: left as they were

    version_dir = write_model_version(tmp_path / "models", "m", 1, size=SIZE, stain=reference.to_dict())
    model = ModelVersion.load(version_dir, ServerSettings(repo=tmp_path / "models", threads=1),
                              ServerMetrics(CollectorRegistry()))
    try:
        served = model.normalise(images)
    finally:
        model.close()
    assert np.array_equal(served, dataset.images)


def test_no_normalisation_removes_a_stale_reference(tmp_path):
    (tmp_path / STAIN_FILE).write_text("{}")
    dataset = types.SimpleNamespace(images=he_tiles(2, size=SIZE))
    before = dataset.images.copy()
    assert normalise_dataset(load_config(), dataset, np.arange(2), tmp_path) is None
    assert not (tmp_path / STAIN_FILE).exists() and np.array_equal(dataset.images, before)


def test_the_preprocess_section_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="preprocess.stain_normalisation"):
        load_config(None, ["preprocess.stain_normalisation=vahadane"])
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(None, ["preprocess.stain_normalisation=reinhard",
                           f"preprocess.reference_image={tmp_path / 'missing.png'}"])
    with pytest.raises(ConfigError, match="needs preprocess.stain_normalisation"):
        load_config(None, [f"preprocess.reference_image={__file__}"])


def test_a_run_written_before_the_preprocess_section_still_resumes(tmp_path):
    import yaml

    from histoedge.training.errors import RunError
    from histoedge.training.run import check_resumable

    written = yaml.safe_load(load_config().to_yaml())
    del written["preprocess"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    check_resumable(tmp_path, load_config())
    with pytest.raises(RunError, match="preprocess.stain_normalisation"):
        check_resumable(tmp_path, load_config(None, ["preprocess.stain_normalisation=reinhard"]))


def test_a_run_written_before_later_model_keys_resumes_only_at_their_old_behaviour(tmp_path):
    import yaml

    from histoedge.training.errors import RunError
    from histoedge.training.run import check_resumable

    written = yaml.safe_load(load_config().to_yaml())
    del written["model"]["input_scaling"], written["model"]["kernel_initializer"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    # such a run divided by 255: it resumes with that setting, and the new default is refused
    check_resumable(tmp_path, load_config(None, ["model.input_scaling=unit"]))
    with pytest.raises(RunError, match="model.input_scaling: 'unit' -> 'standardise'"):
        check_resumable(tmp_path, load_config())
    # a key whose default changed how members train is not filled in: such a run is refused
    del written["training"]["onset"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    with pytest.raises(RunError, match="training.onset"):
        check_resumable(tmp_path, load_config(None, ["model.input_scaling=unit"]))
