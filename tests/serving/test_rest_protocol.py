"""Open Inference Protocol over REST: unmodified ``tritonclient.http`` gets what gRPC gets."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from tests.serving.helpers import (MODEL, SIZE, decode_like_server, encode, http, http_json, labels_for,
                                   multipart, reference, sample_images)


@pytest.fixture(scope="module")
def clients(http_server):
    rest = triton_http.InferenceServerClient(f"127.0.0.1:{http_server.http_port}")
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{http_server.port}")
    yield rest, grpc
    rest.close()
    grpc.close()


def test_health_and_metadata_match_grpc(clients):
    rest, grpc = clients
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.is_model_ready(MODEL) and rest.is_model_ready(MODEL, "1")
    assert not rest.is_model_ready(MODEL, "7") and not rest.is_model_ready("nothing")
    assert "binary_tensor_data" in rest.get_server_metadata()["extensions"]
    over_rest = rest.get_model_metadata(MODEL)
    over_grpc = grpc.get_model_metadata(MODEL, as_json=True)
    assert over_rest["name"] == over_grpc["name"] == MODEL and over_rest["versions"] == ["1"]
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_rest[key]] == \
               [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_grpc[key]]
    assert over_rest["parameters"]["classes"] == "benign,malignant"
    assert rest.get_model_metadata(MODEL, "1") == over_rest


def test_uint8_and_bytes_inference_equal_grpc(clients, repo):
    rest, grpc = clients
    images = sample_images(5, seed=3)
    encoded = np.array([encode(image) for image in images], dtype=object)
    cases = [("image", "UINT8", images), ("image_bytes", "BYTES", encoded)]
    for name, datatype, data in cases:
        rest_input = triton_http.InferInput(name, list(data.shape), datatype)
        rest_input.set_data_from_numpy(data)  # binary tensor data extension
        grpc_input = triton_grpc.InferInput(name, list(data.shape), datatype)
        grpc_input.set_data_from_numpy(data)
        over_rest = rest.infer(MODEL, [rest_input], request_id="r-1")
        over_grpc = grpc.infer(MODEL, [grpc_input])
        assert over_rest.get_response()["id"] == "r-1"
        for output in ("probabilities", "member_probabilities", "label"):
            np.testing.assert_array_equal(over_rest.as_numpy(output), over_grpc.as_numpy(output))
    np.testing.assert_allclose(over_rest.as_numpy("probabilities"),
                               reference(repo / MODEL / "1", np.stack([decode_like_server(e) for e in encoded]))
                               ["probabilities"], rtol=1e-6)
    assert over_rest.as_numpy("label").tolist() == [l.encode() for l in labels_for(repo / MODEL / "1", images)]


def test_json_tensors_and_requested_outputs(http_server, repo):
    images = sample_images(2, seed=9)
    url = f"http://127.0.0.1:{http_server.http_port}/v2/models/{MODEL}/versions/1/infer"
    status, body = http_json(url, {
        "id": "json", "inputs": [{"name": "image", "datatype": "UINT8", "shape": list(images.shape),
                                  "data": images.tolist()}],  # nested rows, as JSON clients send them
        "outputs": [{"name": "label"}, {"name": "probabilities"}]})
    assert status == 200, body
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
    assert body["outputs"][0]["data"] == labels_for(repo / MODEL / "1", images)
    probabilities = np.array(body["outputs"][1]["data"], dtype=np.float32).reshape(body["outputs"][1]["shape"])
    np.testing.assert_array_equal(probabilities, reference(repo / MODEL / "1", images)["probabilities"])
    # Encoded images in JSON: base64 strings, as MLServer and KServe clients send them.
    png = [base64.b64encode(encode(image)).decode() for image in images]
    status, body = http_json(url, {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2],
                                               "parameters": {"content_type": "base64"}, "data": png}],
                                   "outputs": [{"name": "label"}]})
    assert status == 200 and body["outputs"][0]["data"] == labels_for(repo / MODEL / "1", images)


def test_classify_upload_and_status(http_server, repo):
    images = sample_images(2, seed=21, size=40)  # resized by the server, as a scanner's tiles would be
    status, _, data = http(f"http://127.0.0.1:{http_server.http_port}/v2/models/{MODEL}/classify", "POST",
                           *multipart({f"tile{i}.png": encode(image) for i, image in enumerate(images)}))
    body = json.loads(data)
    assert status == 200, body
    resized = np.stack([decode_like_server(encode(image)) for image in images])
    assert [r["file"] for r in body["results"]] == ["tile0.png", "tile1.png"]
    assert [r["label"] for r in body["results"]] == labels_for(repo / MODEL / "1", resized)
    want = reference(repo / MODEL / "1", resized)["probabilities"]
    for result, row in zip(body["results"], want):
        assert result["probabilities"] == pytest.approx({"benign": row[0], "malignant": row[1]}, rel=1e-6)
    status, page = http_json(f"http://127.0.0.1:{http_server.http_port}/status")
    model = page["models"][0]
    assert (model["name"], model["version"], model["ready"], model["precision"]) == (MODEL, "1", True, "fp32")
    assert model["classes"] == ["benign", "malignant"] and len(model["sha256"]) == 64
    assert model["traffic"]["by_protocol"]["rest"] >= 1 and model["traffic"]["p50_ms"] > 0
    assert f"{SIZE}x{SIZE}" == model["image_size"]


def test_http_port_setting():
    from histoedge import HistoedgeError
    from histoedge.serving.settings import ServerSettings

    assert ServerSettings.from_sources({}, {}).http_port == 8000
    assert ServerSettings.from_sources({}, {"HISTOEDGE_HTTP_PORT": "0"}).http_port == 0  # 0: no HTTP server
    assert ServerSettings.from_sources({"http_port": "9000"}, {"HISTOEDGE_HTTP_PORT": "0"}).http_port == 9000
    with pytest.raises(HistoedgeError, match="--http-port"):
        ServerSettings(http_port=70000)
