"""Open Inference Protocol over gRPC: our client and tritonclient against a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from tests.serving.helpers import MODEL, SIZE, decode_like_server, encode, reference, sample_images


@pytest.fixture(scope="module")
def client(address):
    with InferenceClient(address) as client:
        yield client


@pytest.fixture(scope="module")
def triton_client(address):
    return triton.InferenceServerClient(address)


@pytest.fixture(scope="module")
def version_dir(repo):
    return repo / MODEL / "1"


def expected_label(probabilities: np.ndarray) -> list[str]:
    return ["malignant" if p[1] >= 0.5 else "benign" for p in probabilities]


def test_health_and_readiness(client):
    assert client.health() == "SERVING"
    assert client.health(MODEL) == "SERVING"
    assert client.server_live() and client.server_ready()
    assert client.model_ready(MODEL) and client.model_ready(MODEL, "1")
    assert not client.model_ready(MODEL, "7")
    assert not client.model_ready("absent")


def test_our_client_uint8_matches_onnxruntime(client, version_dir):
    images = sample_images(5, seed=1)
    outputs, version = client.infer(
        [Tensor("image", "UINT8", images)], MODEL)
    want = reference(version_dir, images)
    assert version == "1"
    np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs["member_probabilities"], want["member_probabilities"], rtol=1e-6, atol=1e-7)
    assert outputs["member_probabilities"].shape == (5, 2, 2)
    assert [label.decode() for label in outputs["label"]] == expected_label(want["probabilities"])


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff", ".bmp"])
def test_our_client_encoded_images(client, version_dir, ext):
    images = sample_images(3, seed=2)
    encoded = [encode(image, ext) for image in images]
    predictions = client.classify_bytes(encoded, MODEL)
    decoded = np.stack([decode_like_server(data) for data in encoded])
    want = reference(version_dir, decoded)["probabilities"]
    assert [p.label for p in predictions] == expected_label(want)
    np.testing.assert_allclose([p.probabilities for p in predictions], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([p.probability for p in predictions], want[:, 1], rtol=1e-5)


def test_encoded_images_are_resized_with_area_interpolation(client, version_dir):
    big = np.repeat(np.repeat(sample_images(1, seed=3, size=8), 8, axis=1), 8, axis=2)  # 64x64
    data = encode(big[0])
    prediction, = client.classify_bytes([data])  # no model name: the server's only model
    want = reference(version_dir, decode_like_server(data)[None])["probabilities"][0]
    np.testing.assert_allclose(prediction.probabilities, want, rtol=1e-5)


def test_tritonclient_uint8(triton_client, version_dir):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL)
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata.name == MODEL and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("image", "UINT8", [-1, SIZE, SIZE, 3]), ("image_bytes", "BYTES", [-1])]
    images = sample_images(4, seed=4)
    tensor = triton.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    result = triton_client.infer(MODEL, [tensor])
    want = reference(version_dir, images)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("member_probabilities"), want["member_probabilities"], rtol=1e-6)
    assert [x.decode() for x in result.as_numpy("label")] == expected_label(want["probabilities"])


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_tritonclient_bytes_and_requested_outputs(triton_client, version_dir, ext):
    images = sample_images(3, seed=5)
    encoded = np.array([encode(image, ext) for image in images], dtype=object)
    tensor = triton.InferInput("image_bytes", [3], "BYTES")
    tensor.set_data_from_numpy(encoded)
    result = triton_client.infer(MODEL, [tensor], model_version="1", request_id="req-7",
                                 outputs=[triton.InferRequestedOutput("probabilities"),
                                          triton.InferRequestedOutput("label")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["probabilities", "label"]
    assert response.id == "req-7" and response.model_version == "1"
    assert result.as_numpy("member_probabilities") is None
    want = reference(version_dir, np.stack([decode_like_server(bytes(d)) for d in encoded]))
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-5)


def test_typed_contents_are_accepted(address, version_dir):
    images = sample_images(2, seed=6)
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    tensor.contents.uint_contents.extend(images.reshape(-1).tolist())
    with grpc.insecure_channel(address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert len(response.raw_output_contents) == len(response.outputs) == 3
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 2)
    np.testing.assert_allclose(got, reference(version_dir, images)["probabilities"], rtol=1e-6)


def test_server_and_model_metadata(client):
    with grpc.insecure_channel(client.server) as channel:
        metadata = pb_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(pb.ServerMetadataRequest())
    assert metadata.name == "histoedge" and metadata.version
    params = client.model_metadata(MODEL).parameters
    assert params["providers"].string_param == "CPUExecutionProvider"
    assert params["classes"].string_param == "benign,malignant"
    assert params["threshold"].double_param == 0.5


def test_reflection_lists_services(address):
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]), timeout=10))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


def test_metrics_count_requests(module_server, client):
    client.classify_arrays(sample_images(1, seed=8), MODEL)
    value = module_server.metrics.registry.get_sample_value(
        "histoedge_requests_total", {"model": MODEL, "version": "1", "outcome": "ok", "protocol": "grpc"})
    assert value and value >= 1
    assert module_server.metrics.registry.get_sample_value(
        "histoedge_model_ready", {"model": MODEL, "version": "1"}) == 1
