"""The committed gRPC code matches proto/*.proto, and matches the public wire format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import histoedge.serving
from histoedge.serving._proto import inference_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    # protoc runs in a child process: in-process it can crash once TensorFlow's and onnx's
    # native protobuf code is loaded by other tests in the same session.
    subprocess.run([sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    committed = Path(histoedge.serving.__file__).parent / "_proto"
    for name in ("__init__.py", "inference_pb2.py", "inference_pb2_grpc.py", "monitoring_pb2.py",
                 "monitoring_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"serving/_proto/{name} is stale: run `python proto/generate.py`")


def test_wire_compatible_with_tritonclient():
    from tritonclient.grpc import service_pb2 as triton

    def fields(descriptor):
        result = {}
        for field in descriptor.fields:
            result[field.name] = (field.number, field.type)
        for nested in descriptor.nested_types:
            if not nested.GetOptions().map_entry:
                result.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return result

    for name in ("ModelInferRequest", "ModelInferResponse", "InferParameter", "InferTensorContents",
                 "ModelMetadataRequest", "ModelReadyRequest", "ServerMetadataResponse",
                 "ModelStreamInferResponse"):
        assert fields(pb.DESCRIPTOR.message_types_by_name[name]) == fields(
            triton.DESCRIPTOR.message_types_by_name[name]), name
    ours = fields(pb.DESCRIPTOR.message_types_by_name["ModelMetadataResponse"])
    theirs = fields(triton.DESCRIPTOR.message_types_by_name["ModelMetadataResponse"])
    assert {k: v for k, v in ours.items() if k in theirs} == theirs  # plus our `parameters` extension
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == "inference"
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelStreamInfer"}


def test_stream_rpc_matches_triton():
    from tritonclient.grpc import service_pb2 as triton

    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name["ModelStreamInfer"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name["ModelStreamInfer"]
    for method in (ours, theirs):
        assert method.client_streaming and method.server_streaming
    assert ours.input_type.full_name == theirs.input_type.full_name == "inference.ModelInferRequest"
    assert ours.output_type.full_name == theirs.output_type.full_name == "inference.ModelStreamInferResponse"
