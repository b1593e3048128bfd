"""Keras Applications backbones: in-model preprocessing, weights files, two-phase fine-tuning."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from histoedge.training.config import ConfigError, load_config
from histoedge.training.models.backbones import (backbone_of, build_model, load_backbone_weights,
                                                 save_backbone_weights)
from histoedge.training.models.registry import get_backbone_spec, keras_cache_dir
from histoedge.training.recipes import get_recipe
from histoedge.training.trainer import train_member
from tests.training.test_trainer import tiny_data

SIZE = 32
APPLICATIONS = {"resnet50": (keras.applications.ResNet50, keras.applications.resnet50.preprocess_input),
                "efficientnetb0": (keras.applications.EfficientNetB0, None),
                "mobilenetv3small": (keras.applications.MobileNetV3Small, None),
                "densenet121": (keras.applications.DenseNet121, keras.applications.densenet.preprocess_input)}
UNFREEZE = 12


def _config(backbone: str, *extra: str, epochs: int = 1):
    return load_config(overrides=[f"model.backbone={backbone}", "model.dense_units=[]",
                                  "training.batch_size=16", "augmentation.stain=0.0", *extra],
                       epochs=epochs, image_size=SIZE)


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_backbone_is_the_keras_application_with_its_own_preprocessing(name):
    application, preprocess = APPLICATIONS[name]
    model = build_model(_config(name).model, 2, SIZE)
    backbone = backbone_of(model)
    reference = application(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    # The real application: same layer types in the same order, same weight shapes.
    assert [type(a).__name__ for a in backbone.layers] == [type(b).__name__ for b in reference.layers]
    assert [w.shape for w in backbone.weights] == [w.shape for w in reference.weights]
    assert model.output_names == ["probabilities"] and model.output.shape[-1] == 2
    assert "global_pool" in [layer.name for layer in model.layers]
    index = model.layers.index(backbone)
    if preprocess is None:  # EfficientNet and MobileNetV3 take 0..255 pixels and rescale inside
        assert index == 1 and type(backbone.layers[1]).__name__ == "Rescaling"
    else:  # the application's preprocess_input, rebuilt from standard layers in the model
        pixels = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype("float32")
        fed = keras.Model(model.input, model.layers[index - 1].output)
        np.testing.assert_allclose(fed.predict(pixels, verbose=0), preprocess(pixels.copy()), atol=1e-3)


@pytest.mark.parametrize("name", ["mobilenetv3small", "resnet50"])
def test_backbone_batch_norm_follows_the_configured_momentum(name, tmp_path):
    # MobileNetV3 ships 0.999: from random initialisation its moving statistics would not move in a
    # short run and inference-mode outputs stay at chance. The config's momentum must reach every
    # batch-norm layer, and survive a save and load.
    model = build_model(_config(name, "model.batch_norm_momentum=0.8").model, 2, SIZE)
    norms = [l for l in backbone_of(model).layers if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and {l.momentum for l in norms} == {0.8}
    model.save(tmp_path / "m.keras")
    loaded = backbone_of(keras.models.load_model(tmp_path / "m.keras"))
    assert {l.momentum for l in loaded.layers if isinstance(l, keras.layers.BatchNormalization)} == {0.8}


def test_config_validates_backbone_weights_and_fine_tune_keys():
    with pytest.raises(ConfigError, match="model.backbone must be custom, resnet50"):
        _config("vgg16")
    with pytest.raises(ConfigError, match="custom CNN always starts from random weights"):
        load_config(overrides=["model.weights=/tmp/w.weights.h5"])
    with pytest.raises(ConfigError, match="unfreeze_layers must be an integer >= 0 or all"):
        _config("resnet50", "training.fine_tune.unfreeze_layers=-1")
    with pytest.raises(ConfigError, match="learning_rate_ratio must be in"):
        _config("resnet50", "training.fine_tune.learning_rate_ratio=2")
    with pytest.raises(ConfigError, match="head_epochs must be an integer"):
        _config("resnet50", "training.fine_tune.head_epochs=1.5")
    with pytest.raises(ConfigError, match="unknown config key 'training.fine_tune.phase2'"):
        _config("resnet50", "training.fine_tune.phase2=3")
    assert _config("resnet50", "model.weights=none").model.weights is None
    with pytest.raises(ConfigError, match="needs images of at least 32 px"):
        build_model(_config("mobilenetv3small").model, 2, 24)


def test_imagenet_comes_from_the_local_cache_only(tmp_path, monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def no_downloads(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(file_utils, "get_file", no_downloads)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    config = _config("mobilenetv3small", "model.weights=imagenet")
    expected = tmp_path / "keras" / "models" / get_backbone_spec("mobilenetv3small").imagenet_file
    with pytest.raises(ConfigError) as missing:
        build_model(config.model, 2, SIZE)
    message = str(missing.value)
    assert "\n" not in message and str(expected) in message and "nothing is downloaded" in message
    assert keras_cache_dir() == expected.parent
    # A file in Keras's own (legacy .h5) format in the cache is loaded, still without any download.
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    expected.parent.mkdir(parents=True)
    with h5py.File(expected, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    model = build_model(config.model, 2, SIZE)
    for got, want in zip(backbone_of(model).get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_weights_file_that_does_not_fit_is_one_clear_error(tmp_path):
    other = build_model(_config("mobilenetv3small").model, 2, SIZE)
    path = save_backbone_weights(other, tmp_path / "mobilenet.weights.h5")
    densenet = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ConfigError, match="cannot load .*mobilenet.weights.h5 into densenet121"):
        load_backbone_weights(densenet, path, get_backbone_spec("densenet121"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_model(_config("resnet50", f"model.weights={tmp_path / 'missing.weights.h5'}").model, 2, SIZE)


def test_efficientnet_imagenet_variance_convention_is_corrected(tmp_path):
    from histoedge.training.models.registry import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    source = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    norm = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    weights = norm.get_weights()
    norm.set_weights([np.asarray(IMAGENET_MEAN_RGB, "float32"), np.asarray(IMAGENET_STD_RGB, "float32")]
                     + weights[2:])  # Keras's ImageNet file stores std where the variance belongs
    source.save_weights(tmp_path / "effnet.weights.h5")
    model = build_model(_config("efficientnetb0", f"model.weights={tmp_path / 'effnet.weights.h5'}").model,
                        2, SIZE)
    loaded = next(layer for layer in backbone_of(model).layers if isinstance(layer, keras.layers.Normalization))
    np.testing.assert_allclose(loaded.get_weights()[1], np.square(IMAGENET_STD_RGB), rtol=1e-6)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """MobileNetV3Small from a weights file: 1 head epoch, then 1 epoch with the top layers open.

    ``keras.Model.fit`` is wrapped (the real one still runs) to record, per phase, the trainable
    flags, the learning rate and every weight before and after.
    """
    root = tmp_path_factory.mktemp("finetune")
    keras.utils.set_random_seed(123)
    source = build_model(_config("mobilenetv3small").model, 2, SIZE)
    weights_file = save_backbone_weights(source, root / "pretrained.weights.h5")
    config = _config("mobilenetv3small", f"model.weights={weights_file}", "optimizer.schedule=constant",
                     "optimizer.learning_rate=0.01", "training.fine_tune.head_epochs=1",
                     f"training.fine_tune.unfreeze_layers={UNFREEZE}", "training.fine_tune.learning_rate_ratio=0.1",
                     "training.early_stopping.enabled=false", "training.reduce_on_plateau.enabled=false",
                     epochs=2)
    phases = []
    original = keras.Model.fit

    def snapshot(model):  # weight position in model.weights -> value
        return {i: np.array(v.numpy()) for i, v in enumerate(model.weights)}

    def recording_fit(self, *args, **kwargs):
        backbone = backbone_of(self)
        entry = {"trainable": {layer.name: layer.trainable for layer in backbone.layers},
                 "learning_rate": float(keras.ops.convert_to_numpy(self.optimizer.learning_rate)),
                 "before": snapshot(self), "initial_epoch": kwargs.get("initial_epoch")}
        history = original(self, *args, **kwargs)
        entry["after"] = snapshot(self)
        phases.append(entry)
        return history

    images, labels = tiny_data(n=40, size=SIZE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "fit", recording_fit)
        model = train_member(get_recipe("baseline", config), config, (images[:32], labels[:32]),
                             (images[32:], labels[32:]), ["benign", "malignant"], root / "member", verbose=0)
    return {"phases": phases, "source": source, "model": model, "file": weights_file, "root": root}


def _positions(model, variables) -> set[int]:
    index = {id(v): i for i, v in enumerate(model.weights)}
    return {index[id(v)] for v in variables}


def test_weights_file_round_trips_into_the_first_epoch(fine_tuned):
    first = fine_tuned["phases"][0]["before"]
    source = backbone_of(fine_tuned["source"])
    model_backbone = backbone_of(fine_tuned["model"])
    assert len(source.weights) == len(model_backbone.weights) > 100
    for mine, theirs in zip(model_backbone.weights, source.weights):
        (position,) = _positions(fine_tuned["model"], [mine])
        np.testing.assert_array_equal(first[position], theirs.numpy())
    # ...and the head did not come from the file: it was freshly initialised.
    (head,) = _positions(fine_tuned["model"], [fine_tuned["model"].get_layer("probabilities").kernel])
    assert not np.array_equal(first[head], fine_tuned["source"].get_layer("probabilities").kernel.numpy())


def test_head_phase_freezes_the_whole_backbone(fine_tuned):
    head = fine_tuned["phases"][0]
    assert head["initial_epoch"] == 0
    assert not any(head["trainable"].values())
    assert head["learning_rate"] == pytest.approx(0.01)
    model = fine_tuned["model"]
    backbone = _positions(model, backbone_of(model).weights)
    changed = {i for i in head["before"] if not np.array_equal(head["before"][i], head["after"][i])}
    assert changed, "the head phase changed nothing"
    assert not changed & backbone  # not even batch-norm moving statistics (inference mode)
    assert _positions(model, [model.get_layer("probabilities").kernel]) <= changed


def test_fine_tune_phase_opens_exactly_the_top_layers_except_batch_norm(fine_tuned):
    tune = fine_tuned["phases"][1]
    model = fine_tuned["model"]
    layers = backbone_of(model).layers
    assert tune["initial_epoch"] == 1
    assert tune["learning_rate"] == pytest.approx(0.001)  # learning_rate_ratio 0.1
    top = layers[-UNFREEZE:]
    expected = {layer.name for layer in top if not isinstance(layer, keras.layers.BatchNormalization)}
    assert {name for name, flag in tune["trainable"].items() if flag} == expected
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    opened = _positions(model, [v for layer in top if layer.name in expected for v in layer.trainable_weights])
    assert opened, f"the top {UNFREEZE} layers hold no trainable weights"
    changed = {i for i in tune["before"] if not np.array_equal(tune["before"][i], tune["after"][i])}
    backbone = _positions(model, backbone_of(model).weights)
    # Frozen layers and every batch-norm statistic stayed put; the open layers moved (a weight
    # whose gradient is exactly zero, e.g. behind a dead ReLU, cannot move under Adam either).
    assert changed & backbone <= opened
    assert len(changed & opened) >= 0.5 * len(opened)
    assert _positions(model, [model.get_layer("probabilities").kernel]) <= changed
    rows = (fine_tuned["root"] / "member" / "history.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch over both phases
