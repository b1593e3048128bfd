"""gRPC health: SERVING only when every model in the repository is loaded and warmed up."""

from __future__ import annotations

import json

import numpy as np
from grpc_health.v1 import health_pb2

from histoedge.serving.client import InferenceClient
from tests.support.model_packages import write_model_version
from tests.serving.helpers import MODEL


def test_health_follows_every_model(tmp_path, start_server):
    write_model_version(tmp_path, MODEL, 1)
    broken = write_model_version(tmp_path, "other", 1, classes=("a", "b", "c"))
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(dict(manifest, sha256="f" * 64)))
    server = start_server(tmp_path)
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        assert client.health() == "NOT_SERVING"
        assert client.health(MODEL) == "SERVING" and client.health("other") == "NOT_SERVING"
        assert not client.server_ready() and client.server_live()
        write_model_version(tmp_path, "other", 2, classes=("a", "b", "c"))
        server.models.refresh()
        assert client.health() == "SERVING" and client.server_ready()
        # multi-class: arg-max labels, probability of the predicted class
        prediction, = client.classify_arrays(np.zeros((1, 16, 16, 3), np.uint8), "other")
        assert prediction.label == "abc"[int(np.argmax(prediction.probabilities))]
        assert prediction.probability == max(prediction.probabilities)
    server.stop(grace=1)
    status = server.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING  # shutting down
