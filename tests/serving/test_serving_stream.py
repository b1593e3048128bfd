"""ModelStreamInfer: Triton's streaming RPC, driven by tritonclient's start_stream/async_stream_infer."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from tests.serving.helpers import MODEL, SIZE, reference, sample_images


@pytest.fixture(scope="module")
def version_dir(repo):
    return repo / MODEL / "1"


def _input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def test_tritonclient_stream_answers_every_request(address, version_dir):
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        batches = {str(i): sample_images(1 + i % 3, seed=10 + i) for i in range(12)}
        for request_id, images in batches.items():
            client.async_stream_infer(MODEL, [_input(images)], request_id=request_id,
                                      outputs=[triton.InferRequestedOutput("probabilities")])
        got = {}
        for _ in batches:
            result, error = answers.get(timeout=30)
            assert error is None, error
            got[result.get_response().id] = result.as_numpy("probabilities")
    finally:
        client.stop_stream()
        client.close()
    assert set(got) == set(batches)
    for request_id, images in batches.items():
        want = reference(version_dir, images)["probabilities"]
        np.testing.assert_allclose(got[request_id], want, rtol=1e-6, atol=1e-7)


def test_a_bad_request_fails_alone_and_the_stream_goes_on(address, version_dir):
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        wrong = np.zeros((1, SIZE + 1, SIZE, 3), np.uint8)
        client.async_stream_infer(MODEL, [_input(wrong)], request_id="bad")
        client.async_stream_infer("no-such-model", [_input(sample_images(1))], request_id="unknown")
        good = sample_images(2, seed=5)
        client.async_stream_infer(MODEL, [_input(good)], request_id="good")
        results = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    errors = sorted(str(error) for result, error in results if error is not None)
    assert len(errors) == 2
    assert "INVALID_ARGUMENT" in " ".join(errors) and "NOT_FOUND" in " ".join(errors)
    (good_result,) = [result for result, error in results if error is None]
    np.testing.assert_allclose(good_result.as_numpy("probabilities"),
                               reference(version_dir, good)["probabilities"], rtol=1e-6)


def test_failed_answers_carry_the_request_id(address):
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=MODEL, id="tile-batch-7")
        request.inputs.add(name="image", datatype="UINT8", shape=[1, 2, 2, 3])
        request.raw_input_contents.append(bytes(12))
        (answer,) = list(stub.ModelStreamInfer(iter([request]), timeout=30))
    assert answer.error_message.startswith("INVALID_ARGUMENT")
    assert answer.infer_response.id == "tile-batch-7"
