"""The regularised CNN: seed architecture by default, every regulariser switch changes the model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from histoedge.training.config import CNNConfig, ConfigError
from histoedge.training.models.cnn import MIN_CHANNEL_STD, build_cnn, channel_statistics

TINY = dict(filters=[8, 16], block_dropout=[0.0, 0.0], dense_units=[16])
STATS = ([180.0, 130.0, 170.0], [50.0, 45.0, 30.0])   # channel means and deviations, 0..255 units


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_default_reproduces_seed_base_cnn():
    model = build_cnn(CNNConfig(), num_classes=2, image_size=224, input_stats=STATS)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 256, 256]
    assert [c.padding for c in convs] == ["valid", "same", "same", "same", "same"]
    assert [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)] == [0.4, 0.2]
    assert [l.units for l in model.layers if isinstance(l, keras.layers.Dense)] == [256, 128, 2]
    # the one departure from the seed: inputs standardised per channel instead of divided by 255
    assert isinstance(model.layers[1], keras.layers.Rescaling) and model.layers[1].name == "standardise"
    assert model.layers[1].scale == pytest.approx([1 / s for s in STATS[1]])
    assert model.output_names == ["probabilities"]
    # the seed reports 3.37M parameters (with a 1-unit sigmoid head; ours is a 2-way softmax)
    assert 3.36e6 < model.count_params() < 3.38e6
    assert "BatchNormalization" not in layer_types(model)
    assert model.losses == []


def test_small_inputs_pool_only_while_possible():
    model = build_cnn(CNNConfig(), num_classes=3, image_size=32, input_stats=STATS)
    pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
    assert len(pools) == 4  # 30 -> 15 -> 7 -> 3 -> 1, then no more pooling
    probs = model(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32"))
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind, expected", [
    ("l1", lambda w: 1e-3 * np.abs(w).sum()),
    ("l2", lambda w: 1e-2 * np.square(w).sum()),
    ("l1_l2", lambda w: 1e-3 * np.abs(w).sum() + 1e-2 * np.square(w).sum()),
])
def test_kernel_regularisers_add_the_right_penalties(kind, expected):
    config = CNNConfig(**TINY, regularizer=kind, l1=1e-3, l2=1e-2)
    model = build_cnn(config, 2, 32, STATS)
    kernels = [l.kernel.numpy() for l in model.layers if hasattr(l, "kernel")]
    assert len(model.losses) == len(kernels) == 4
    want = sum(expected(w) for w in kernels)
    assert float(sum(model.losses)) == pytest.approx(want, rel=1e-4)
    assert build_cnn(CNNConfig(**TINY), 2, 32, STATS).losses == []


def test_unknown_regulariser_is_a_config_error():
    with pytest.raises(ConfigError, match="regularizer"):
        build_cnn(CNNConfig(**TINY, regularizer="l3"), 2, 32, STATS)


def test_dropout_batchnorm_and_global_pool_switches():
    plain = layer_types(build_cnn(CNNConfig(**TINY), 2, 32, STATS))
    assert "Dropout" not in plain and "BatchNormalization" not in plain and "Flatten" in plain
    model = build_cnn(CNNConfig(**{**TINY, "block_dropout": [0.3, 0.0]}, head_dropout=0.5,
                                batch_norm=True, global_pool=True), 2, 32, STATS)
    names = [l.name for l in model.layers]
    assert "dropout1" in names and "dropout2" not in names
    assert [l.rate for l in model.layers if l.name.startswith("head_dropout")] == [0.5, 0.5]
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers) == 3
    assert "GlobalAveragePooling2D" in layer_types(model) and "Flatten" not in layer_types(model)


def test_batch_norm_statistics_follow_short_runs():
    # Keras's 0.99 left validation statistics so stale after a few dozen steps that early
    # stopping restored a constant predictor; the config's default must reach the layers.
    model = build_cnn(CNNConfig(**TINY, batch_norm=True), 2, 32, STATS)
    momenta = {l.momentum for l in model.layers if isinstance(l, keras.layers.BatchNormalization)}
    assert momenta == {CNNConfig().batch_norm_momentum} and CNNConfig().batch_norm_momentum < 0.99
    with pytest.raises(ConfigError, match="batch_norm_momentum"):
        build_cnn(CNNConfig(**TINY, batch_norm=True, batch_norm_momentum=1.0), 2, 32, STATS)


def test_max_norm_constraint_holds_after_a_training_step():
    config = CNNConfig(**TINY, max_norm=0.05)
    model = build_cnn(config, 2, 32, STATS)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=10.0), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.eye(2)[rng.integers(0, 2, 8)].astype("float32")
    model.train_on_batch(x, y)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            norms = np.sqrt(np.square(layer.kernel.numpy()).sum(axis=(0, 1, 2)))
        elif isinstance(layer, keras.layers.Dense):
            norms = np.sqrt(np.square(layer.kernel.numpy()).sum(axis=0))
        else:
            continue
        assert norms.max() <= 0.05 + 1e-5, layer.name
    unconstrained = build_cnn(CNNConfig(**TINY), 2, 32, STATS)
    assert unconstrained.get_layer("conv1").kernel_constraint is None


def test_cnn_config_round_trip_and_width():
    config = CNNConfig(filters=[4, 8, 16], block_dropout=[0.1], dense_units=[8], batch_norm=True)
    assert CNNConfig.from_config(config.get_config()) == config
    model = build_cnn(config, 2, 32, STATS)
    assert [l.filters for l in model.layers if isinstance(l, keras.layers.Conv2D)] == [4, 8, 16]
    with pytest.raises(ConfigError, match="unknown config key 'model.filtrs'"):
        CNNConfig.from_config({"filtrs": [1]})


def test_kernel_initializer_reaches_hidden_kernels_but_not_the_softmax():
    he = build_cnn(CNNConfig(filters=[8, 16], block_dropout=[0.0, 0.0], dense_units=[16], kernel_initializer="he_normal"), 2, 32, STATS)
    hidden = [layer for layer in he.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
              and layer.name != "probabilities"]
    assert hidden and all(type(layer.kernel_initializer).__name__ == "HeNormal" for layer in hidden)
    assert type(he.get_layer("probabilities").kernel_initializer).__name__ == "GlorotUniform"
    default = build_cnn(CNNConfig(filters=[8, 16], block_dropout=[0.0, 0.0], dense_units=[16]), 2, 32, STATS)
    assert type(default.get_layer("conv1").kernel_initializer).__name__ == "GlorotUniform"
    # He scaling keeps the signal's size through ReLU layers: conv2's kernel has std sqrt(2 / fan_in)
    kernel = keras.ops.convert_to_numpy(he.get_layer("conv2").kernel)
    fan_in = 3 * 3 * 8
    assert 0.7 * np.sqrt(2 / fan_in) < kernel.std() < 1.1 * np.sqrt(2 / fan_in)
    with pytest.raises(ConfigError, match="model.kernel_initializer"):
        CNNConfig(kernel_initializer="zeros")


def test_channel_statistics_against_hand_computed_values():
    images = np.zeros((3, 2, 2, 3), np.uint8)
    images[..., 0] = [[[10, 20], [30, 40]]]          # the same 4 values in every image
    images[0, ..., 1], images[1, ..., 1], images[2, ..., 1] = 0, 90, 180   # one value per image
    images[..., 2] = 7                                   # constant: the floor applies
    # chunk=2 splits the images, so the sums must carry across chunks
    mean, std = channel_statistics(images, chunk=2)
    assert mean == pytest.approx([25.0, 90.0, 7.0])
    assert std == pytest.approx([np.sqrt(125.0), np.sqrt(5400.0), MIN_CHANNEL_STD])
    with pytest.raises(ConfigError, match="at least one training image"):
        channel_statistics(images[:0])


def test_standardise_centres_the_training_images_and_reloads_without_custom_objects(tmp_path):
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal([200, 140, 190], [30, 20, 10], (16, 32, 32, 3)), 0, 255).astype(np.float32)
    config = CNNConfig(**TINY, input_scaling="standardise")
    model = build_cnn(config, 2, 32, channel_statistics(images))
    assert "rescale" not in [layer.name for layer in model.layers]
    first = keras.Model(model.inputs[0], model.get_layer("standardise").output)
    scaled = keras.ops.convert_to_numpy(first(images))
    assert np.abs(scaled.mean((0, 1, 2))).max() < 1e-3
    assert np.abs(scaled.std((0, 1, 2)) - 1).max() < 1e-3
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert np.abs(again.predict(images, verbose=0) - model.predict(images, verbose=0)).max() < 1e-6
    unit = build_cnn(CNNConfig(**TINY, input_scaling="unit"), 2, 32)
    assert unit.get_layer("rescale").scale == pytest.approx(1 / 255)
    assert CNNConfig().input_scaling == "standardise"


def test_standardise_needs_statistics_and_the_custom_cnn():
    with pytest.raises(ConfigError, match="needs the training images' channel statistics"):
        build_cnn(CNNConfig(**TINY, input_scaling="standardise"), 2, 32)
    with pytest.raises(ConfigError, match="3 means and 3 positive deviations"):
        build_cnn(CNNConfig(**TINY, input_scaling="standardise"), 2, 32, ([1.0, 2.0], [1.0, 1.0]))
    with pytest.raises(ConfigError, match="model.input_scaling"):
        CNNConfig(input_scaling="minmax")
