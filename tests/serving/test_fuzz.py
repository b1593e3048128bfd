"""Property-based fuzzing of ModelInfer against a real server on loopback (a fixed CI budget).

Every malformed request must be answered with a client-error status, never
INTERNAL or UNKNOWN, and valid requests sent in between must still get
onnxruntime's answer.  bench/fuzz_server.py runs the same strategies for
100,000+ cases against a ``histoedge serve`` process and reports its memory.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from histoedge.serving._proto import inference_pb2 as pb
from tests.serving.fuzzing import infer_requests, request_bytes, valid_request
from tests.serving.helpers import MODEL, SIZE, reference, sample_images

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
EXAMPLES = 1200
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])


class Prober:
    """Sends raw request bytes; every 25th call also checks a valid request against onnxruntime."""

    def __init__(self, address: str, version_dir) -> None:
        self.channel = grpc.insecure_channel(address)
        self.infer = self.channel.unary_unary(MODEL_INFER)  # bytes in, bytes out
        self.images = sample_images(3, seed=11, size=SIZE)
        self.want = reference(version_dir, self.images)["probabilities"]
        self.valid = valid_request(self.images).SerializeToString()
        self.calls = self.checked = 0

    def send(self, data: bytes) -> grpc.StatusCode:
        self.calls += 1
        if self.calls % 25 == 0:
            self.check_valid()
        try:
            self.infer(data, timeout=20)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    def check_valid(self) -> None:
        response = pb.ModelInferResponse.FromString(self.infer(self.valid, timeout=20))
        index = [o.name for o in response.outputs].index("probabilities")
        got = np.frombuffer(response.raw_output_contents[index], np.float32).reshape(self.want.shape)
        np.testing.assert_allclose(got, self.want, rtol=1e-6, atol=1e-7)
        self.checked += 1


@pytest.fixture(scope="module")
def prober(module_server, repo):
    prober = Prober(f"127.0.0.1:{module_server.port}", repo / MODEL / "1")
    yield prober
    assert prober.checked >= EXAMPLES // 25  # the valid requests really were interleaved
    prober.check_valid()  # and the server still answers correctly at the end
    prober.channel.close()


@FUZZ
@given(request=infer_requests(size=SIZE))
def test_structured_requests_get_client_errors(prober, request):
    code = prober.send(request.SerializeToString())
    assert code not in FORBIDDEN, (code, request)


@FUZZ
@given(data=request_bytes(size=SIZE))
def test_raw_bytes_get_client_errors(prober, data):
    code = prober.send(data)
    assert code not in FORBIDDEN, (code, data[:200])
