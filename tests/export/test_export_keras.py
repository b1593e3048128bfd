"""`histoedge export --keras`: .keras, .h5 and SavedModel files a user brings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import histoedge.cli
from histoedge.export.manifest import Manifest
from histoedge.export.package import ExportOptions, export_keras
from histoedge.export.repository import ExportError
from histoedge.export.verify import make_session, predict, verify_version


@pytest.fixture(scope="module")
def sigmoid_model(make_model):
    return make_model(sigmoid=True, seed=3)


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_sigmoid_model_in_every_format(fmt, sigmoid_model, tmp_path):
    path = tmp_path / ("model.keras" if fmt == "keras" else "model.h5" if fmt == "h5" else "sm")
    if fmt == "savedmodel":
        sigmoid_model.export(str(path))
    else:
        sigmoid_model.save(path)
    manifest = export_keras(path, ("benign", "malignant"), tmp_path / "models", "mine")
    version_dir = tmp_path / "models" / "mine" / "1"
    assert verify_version(version_dir).ok
    images = np.random.default_rng(5).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    p = sigmoid_model.predict(images.astype(np.float32), verbose=0)[:, 0]
    probabilities, members = predict(make_session(version_dir / "model.onnx"), images)
    assert np.abs(probabilities - np.stack([1 - p, p], axis=1)).max() <= 1e-4
    assert members.shape == (16, 1, 2)
    assert manifest.extra["sigmoid_output_expanded"] is True
    assert manifest.extra["rescaling_layer_detected"] is True and manifest.extra["input_scale"] == 1.0
    assert manifest.threshold == 0.5 and manifest.positive_class == 1


def test_model_without_rescaling_is_scaled_in_graph(make_model, tmp_path):
    model = make_model(n_classes=3, rescaling=False, seed=4)
    model.save(tmp_path / "raw.keras")
    manifest = export_keras(tmp_path / "raw.keras", ("a", "b", "c"), tmp_path / "models", "raw")
    assert manifest.extra["input_scale"] == pytest.approx(1 / 255)
    images = np.random.default_rng(6).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    expected = model.predict(images.astype(np.float32) / 255.0, verbose=0)
    probabilities, _ = predict(make_session(tmp_path / "models" / "raw" / "1" / "model.onnx"), images)
    assert np.abs(probabilities - expected).max() <= 1e-4
    assert manifest.threshold is None and manifest.positive_class is None
    explicit = export_keras(tmp_path / "raw.keras", ("a", "b", "c"), tmp_path / "models", "raw",
                            input_scale=1.0)
    assert explicit.extra["input_scale"] == 1.0 and explicit.version == 2


def test_int8_keras_with_data_and_calibration_folders(sigmoid_model, make_images, tmp_path, capsys):
    sigmoid_model.save(tmp_path / "m.keras")
    for index, name in enumerate(("benign", "malignant")):
        make_images(tmp_path / "data" / name, 6, seed=10 + index)
    make_images(tmp_path / "calib" / "any" / "nested", 10, seed=20)
    code = histoedge.cli.main(["export", "--keras", str(tmp_path / "m.keras"), "--classes", "benign,malignant",
                           "--repo", str(tmp_path / "models"), "--name", "q", "--precision", "int8",
                           "--data", str(tmp_path / "data"), "--calibration-dir", str(tmp_path / "calib"),
                           "--force"])
    assert code == 0, capsys.readouterr().err
    manifest = Manifest.load(tmp_path / "models" / "q" / "1")
    assert manifest.precision == "int8" and manifest.extra["calibration_images"] == 10
    assert manifest.metrics["fp32"]["n"] == 12 and manifest.metrics["int8"]["n"] == 12
    assert json.loads((tmp_path / "models" / "q" / "1" / "manifest.json").read_text())["members"] == ["m"]


def test_keras_input_errors(sigmoid_model, tmp_path):
    sigmoid_model.save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match="calibration"):
        export_keras(tmp_path / "m.keras", ("a", "b"), tmp_path, "x", options=ExportOptions(precision="int8"))
    with pytest.raises(ExportError, match="one \\(sigmoid\\) output"):
        export_keras(tmp_path / "m.keras", ("a", "b", "c"), tmp_path, "x")
    with pytest.raises(ExportError, match="does not exist"):
        export_keras(tmp_path / "nope.keras", ("a", "b"), tmp_path, "x")
    assert histoedge.cli.main(["export", "--keras", str(tmp_path / "m.keras"), "--repo", str(tmp_path),
                           "--name", "x"]) == 2


def test_standardising_cnn_is_recognised_as_taking_raw_pixels(tmp_path):
    from histoedge.training.config import CNNConfig
    from histoedge.training.models.cnn import build_cnn, channel_statistics

    images = np.random.default_rng(8).integers(100, 256, (8, 32, 32, 3), dtype=np.uint8)
    model = build_cnn(CNNConfig(filters=[4, 8], block_dropout=[0.0, 0.0], dense_units=[8],
                                input_scaling="standardise"), 2, 32, channel_statistics(images))
    model.save(tmp_path / "std.keras")
    manifest = export_keras(tmp_path / "std.keras", ("benign", "malignant"), tmp_path / "models", "std")
    assert manifest.extra["rescaling_layer_detected"] is True and manifest.extra["input_scale"] == 1.0
    expected = model.predict(images.astype(np.float32), verbose=0)
    probabilities, _ = predict(make_session(tmp_path / "models" / "std" / "1" / "model.onnx"), images)
    assert np.abs(probabilities - expected).max() <= 1e-4


@pytest.mark.parametrize("adapted_on", ["raw", "unit"])
def test_normalization_layer_is_frozen_into_the_graph(adapted_on, tmp_path):
    """Keras 3 keeps a Normalization layer's statistics as plain tensors, which tf2onnx
    would turn into extra graph inputs; export folds them in and reads which pixel range
    the layer was adapted on."""
    import keras

    rng = np.random.default_rng(9)
    images = rng.integers(40, 256, (12, 32, 32, 3), dtype=np.uint8)
    scale = 1.0 if adapted_on == "raw" else 1 / 255
    norm = keras.layers.Normalization()
    norm.adapt(images.astype(np.float32) * scale)
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(norm(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model.save(tmp_path / "norm.keras")
    manifest = export_keras(tmp_path / "norm.keras", ("benign", "malignant"), tmp_path / "models", "n")
    assert manifest.extra["input_scale"] == pytest.approx(scale)
    session = make_session(tmp_path / "models" / "n" / "1" / "model.onnx")
    assert len(session.get_inputs()) == 1
    expected = model.predict(images.astype(np.float32) * scale, verbose=0)
    probabilities, _ = predict(session, images)
    assert np.abs(probabilities - expected).max() <= 1e-4
