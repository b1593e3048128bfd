"""Every request error maps to its gRPC status code, with a message that says what was wrong."""

from __future__ import annotations

import struct
import zlib

import grpc
import numpy as np
import pytest

from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving.codecs import encode_bytes
from tests.serving.helpers import MODEL, SIZE, Gate, encode, sample_images, wait_until

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def stub(address):
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def image_request(images: np.ndarray, name: str = "image", datatype: str = "UINT8",
                  model: str = MODEL, version: str = "", shape=None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape or images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def bytes_request(items: list[bytes], model: str = MODEL) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[len(items)])
    request.raw_input_contents.append(encode_bytes(items))
    return request


def call_error(stub, request, timeout: float = 10) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=timeout)
    return caught.value


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming a huge image, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@pytest.mark.parametrize("request_factory, code, words", [
    (lambda: image_request(sample_images(1), name="pixels"), Code.INVALID_ARGUMENT, "unknown input 'pixels'"),
    (lambda: image_request(sample_images(1).astype(np.int8), datatype="INT8"), Code.INVALID_ARGUMENT, "must be UINT8"),
    (lambda: image_request(sample_images(1, size=8)), Code.INVALID_ARGUMENT, f"[N,{SIZE},{SIZE},3]"),
    (lambda: image_request(sample_images(2), shape=[1, SIZE, SIZE, 3]), Code.INVALID_ARGUMENT, "raw contents hold"),
    (lambda: image_request(sample_images(1), datatype="FLOAT7"), Code.INVALID_ARGUMENT, "unknown datatype"),
    (lambda: bytes_request([b"definitely not an image"]), Code.INVALID_ARGUMENT, "unrecognised header"),
    (lambda: bytes_request([encode(sample_images(1)[0])[:60]]), Code.INVALID_ARGUMENT, "could not decode"),
    (lambda: bytes_request([png_header(100_000, 100_000)]), Code.INVALID_ARGUMENT, "over the limit"),
    (lambda: image_request(sample_images(1), model="absent"), Code.NOT_FOUND, "unknown model 'absent'"),
    (lambda: image_request(sample_images(1), version="9"), Code.NOT_FOUND, "no version '9'"),
])
def test_status_codes(stub, request_factory, code, words):
    error = call_error(stub, request_factory())
    assert error.code() == code
    assert words in error.details()


def test_truncated_bytes_contents(stub):
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(encode_bytes([b"abc"]))
    error = call_error(stub, request)
    assert error.code() == Code.INVALID_ARGUMENT and "too few for 2 elements" in error.details()


def test_server_survives_errors(stub):
    response = stub.ModelInfer(image_request(sample_images(2)), timeout=10)
    assert response.outputs[0].shape == [2, 2]


def test_queue_full_then_recovers(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, max_queue_size=2, max_queue_delay_ms=0)
    batcher = server.models.get(MODEL).batcher
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(image_request(sample_images(1)), timeout=30)
        wait_until(gate.running.is_set)
        queued = [stub.ModelInfer.future(image_request(sample_images(1)), timeout=30) for _ in range(2)]
        wait_until(lambda: batcher.pending() == 2)
        error = call_error(stub, image_request(sample_images(1)))
        assert error.code() == Code.RESOURCE_EXHAUSTED and "--max-queue-size" in error.details()
        gate.release()
        for future in [first] + queued:
            assert future.result().outputs[0].shape == [1, 2]
    assert server.metrics.registry.get_sample_value(
        "histoedge_requests_total", {"model": MODEL, "version": "1", "outcome": "queue_full", "protocol": "grpc"}) == 1


def test_deadline_exceeded_leaves_queue(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, max_queue_delay_ms=0)
    batcher = server.models.get(MODEL).batcher
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(image_request(sample_images(1)), timeout=30)
        wait_until(gate.running.is_set)
        error = call_error(stub, image_request(sample_images(1)), timeout=0.5)
        assert error.code() == Code.DEADLINE_EXCEEDED
        wait_until(lambda: batcher.pending() == 0)
        gate.release()
        assert first.result().outputs
    assert gate.batch_sizes == [1]  # the expired request never ran


def test_cancelled_request_leaves_queue(repo, start_server):
    gate = Gate(hold=True)
    server = start_server(repo, run_hook=gate, max_queue_delay_ms=0)
    batcher = server.models.get(MODEL).batcher
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(image_request(sample_images(1)), timeout=30)
        wait_until(gate.running.is_set)
        doomed = stub.ModelInfer.future(image_request(sample_images(3)), timeout=30)
        wait_until(lambda: batcher.pending() == 1)
        assert doomed.cancel()
        wait_until(lambda: batcher.pending() == 0)
        gate.release()
        assert first.result().outputs
        with pytest.raises(grpc.FutureCancelledError):
            doomed.result()
    wait_until(lambda: server.metrics.registry.get_sample_value(
        "histoedge_requests_total", {"model": MODEL, "version": "1", "outcome": "cancelled", "protocol": "grpc"}) == 1)
    assert gate.batch_sizes == [1]
