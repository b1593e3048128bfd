"""Every listed backbone end to end: trained as a config-defined ensemble member, exported with
fp32 parity, verified, and served over gRPC."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from histoedge.export.convert import KerasMember, load_keras_model
from histoedge.export.graph import EnsembleSpec
from histoedge.export.package import ExportOptions, export_run
from histoedge.export.verify import make_session, predict, verify_version
from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from histoedge.serving.server import InferenceServer
from histoedge.serving.settings import ServerSettings
from histoedge.training.config import load_config
from histoedge.training.run import train_run
from tests.training.conftest import write_image_folder

# Recipes defined in a config file only, each on a different built-in base recipe.
CONFIG = {
    "training": {"epochs": 1, "batch_size": 16, "early_stopping": {"enabled": False}},
    "augmentation": {"stain": 0.0},
    "evaluation": {"bootstrap": 10},
    "ensemble": {"method": "soft_vote",
                 "members": ["resnet_focal", "efficientnet_cw", "mobilenet_ldam", "densenet_oversample"]},
    "recipes": {
        "resnet_focal": {"base": "focal", "model": {"backbone": "resnet50", "dense_units": []}},
        "efficientnet_cw": {"base": "class_weight", "model": {"backbone": "efficientnetb0", "dense_units": []}},
        "mobilenet_ldam": {"base": "ldam", "model": {"backbone": "mobilenetv3small", "dense_units": []}},
        "densenet_oversample": {"base": "oversample", "oversample_method": "random",
                                "model": {"backbone": "densenet121", "dense_units": []}},
    },
}
BACKBONES = {"resnet_focal": "resnet50", "efficientnet_cw": "efficientnetb0",
             "mobilenet_ldam": "mobilenetv3small", "densenet_oversample": "densenet121"}


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    data = write_image_folder(root / "data", size=32)
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    config = load_config(root / "config.yaml", image_size=32)
    metrics = train_run(data, root / "run", config, ensemble=True, verbose=0)
    return root, metrics


@pytest.fixture(scope="module")
def exported(backbone_run):
    root, _ = backbone_run
    manifest = export_run(root / "run", root / "models", "backbones", options=ExportOptions())
    return root / "models" / "backbones" / "1", manifest


@pytest.fixture(scope="module")
def keras_members(backbone_run):
    root, _ = backbone_run
    return {member: load_keras_model(root / "run" / "members" / member / "model.keras") for member in BACKBONES}


def test_config_file_recipes_train_as_ensemble_members(backbone_run, keras_members):
    _, metrics = backbone_run
    assert metrics["members"] == list(BACKBONES)
    for member, backbone in BACKBONES.items():
        model = keras_members[member]
        assert model.get_layer("backbone").name == "backbone" and model.name == f"histoedge_{backbone}"
        assert 0.0 <= metrics["models"][member]["test"]["roc_auc"] <= 1.0


def test_each_backbone_exports_with_parity_and_verifies(backbone_run, exported, keras_members):
    root, _ = backbone_run
    version_dir, manifest = exported
    assert manifest.members == tuple(BACKBONES)
    assert manifest.extra["parity_max_abs_diff"] <= 1e-4
    report = verify_version(version_dir)
    assert report.ok, report.summary()
    # Per member, independently of the export's own check: ONNX member output vs Keras.
    images = np.random.default_rng(3).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    _, members = predict(make_session(version_dir / "model.onnx"), images)
    for index, member in enumerate(BACKBONES):
        keras_probs = KerasMember(keras_members[member]).predict(images)
        assert np.abs(members[:, index] - keras_probs).max() <= 1e-4, member
    spec = EnsembleSpec.load(root / "run" / "ensemble.json")
    assert spec.method == "soft_vote" and spec.n_members == 4


def test_the_exported_backbones_serve_over_grpc(exported):
    version_dir, _ = exported
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected, expected_members = predict(make_session(version_dir / "model.onnx"), images)
    server = InferenceServer(ServerSettings(repo=version_dir.parent.parent, host="127.0.0.1", port=0,
                                            metrics_port=0, poll_seconds=0, threads=1),
                             CollectorRegistry()).start()
    try:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            assert client.model_ready("backbones")
            outputs, version = client.infer([Tensor("image", "UINT8", images)], "backbones")
    finally:
        server.stop(grace=1)
    assert version == "1"
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["member_probabilities"], expected_members, rtol=1e-5, atol=1e-6)
