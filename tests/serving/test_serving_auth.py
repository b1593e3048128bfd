"""Bearer tokens, the reflection switch and the metrics listener (issue 14, defects 9 and 10)."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from histoedge import HistoedgeError
from histoedge.serving.auth import TokenAuth, read_token_file
from histoedge.serving.settings import ServerSettings
from tests.serving.fuzzing import valid_request
from tests.serving.helpers import free_port, sample_images

TOKEN = "0123456789abcdef-token-one"
OTHER = "fedcba9876543210-token-two"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_token_auth_rules(tmp_path):
    auth = TokenAuth([TOKEN, OTHER])
    assert auth.allows(f"Bearer {TOKEN}") and auth.allows(f"bearer {OTHER}".encode())
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer "):
        assert not auth.allows(header), header
    assert auth.exempt("/grpc.health.v1.Health/Check") and not auth.exempt(MODEL_INFER)
    assert auth.exempt("/v2/health/ready") and not auth.exempt("/v2/models/tiny/infer")
    assert not TokenAuth([TOKEN], exempt_health=False).exempt("/grpc.health.v1.Health/Watch")
    with pytest.raises(HistoedgeError, match="at least 16"):
        TokenAuth(["short"])
    path = tmp_path / "tokens"
    path.write_text(f"# rotate: old first\n{TOKEN}\n\n  {OTHER}  \n")
    assert read_token_file(path) == [TOKEN, OTHER]
    settings = ServerSettings(auth_token_file=path)
    assert TokenAuth.from_settings(settings).allows(f"Bearer {OTHER}")
    assert TokenAuth.from_settings(ServerSettings()) is None
    assert TOKEN not in repr(ServerSettings(auth_token=TOKEN))  # secrets stay out of logs


def rpc_code(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def test_bearer_token_on_grpc_and_metrics(repo, start_server, tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    server = start_server(repo, auth_token_file=tmp_path / "token", metrics_port=free_port())
    data = valid_request(sample_images(1)).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        infer = channel.unary_unary(MODEL_INFER)
        assert rpc_code(infer, data, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(infer, data[:-1], timeout=10) == grpc.StatusCode.UNAUTHENTICATED  # not parsed first
        assert rpc_code(infer, data, timeout=10, metadata=[("authorization", f"Bearer {OTHER}")]) \
            == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_code(infer, data, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")]) \
            == grpc.StatusCode.OK
        health = health_pb2_grpc.HealthStub(channel)  # exempt by default: probes carry no token
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
    url = f"http://127.0.0.1:{server.settings.metrics_port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=5)
    assert caught.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert b"histoedge_model_ready" in urllib.request.urlopen(request, timeout=5).read()


def test_health_needs_the_token_when_asked_and_reflection_can_be_off(repo, start_server):
    server = start_server(repo, auth_token=TOKEN, auth_health=True, no_reflection=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert rpc_code(health.Check, health_pb2.HealthCheckRequest(), timeout=10) == \
            grpc.StatusCode.UNAUTHENTICATED
        token = [("authorization", f"Bearer {TOKEN}")]
        assert rpc_code(health.Check, health_pb2.HealthCheckRequest(), timeout=10, metadata=token) == \
            grpc.StatusCode.OK
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(reflection.ServerReflectionInfo(iter([request]), timeout=10, metadata=token))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_is_on_by_default(address):
    with grpc.insecure_channel(address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names


def test_metrics_listen_on_loopback_by_default(repo, start_server):
    assert ServerSettings().metrics_host == "127.0.0.1"
    server = start_server(repo, host="0.0.0.0", metrics_port=free_port())
    assert server._metrics_http.server_address[0] == "127.0.0.1"  # gRPC on every interface, metrics not
    assert b"histoedge_model_ready" in urllib.request.urlopen(
        f"http://127.0.0.1:{server.settings.metrics_port}/metrics", timeout=5).read()


def test_client_and_cli_send_the_token(repo, start_server, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from histoedge.serving.client import InferenceClient

    server = start_server(repo, auth_token=TOKEN, auth_health=True)
    address = f"127.0.0.1:{server.port}"
    with InferenceClient(address, token=TOKEN) as client:
        assert client.health() == "SERVING"
        assert len(client.classify_arrays(sample_images(2), "tiny")) == 2
    with InferenceClient(address) as client, pytest.raises(grpc.RpcError) as caught:
        client.classify_arrays(sample_images(1), "tiny")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    histoedge = str(Path(sys.executable).parent / "histoedge")
    env = dict(os.environ, HISTOEDGE_AUTH_TOKEN=TOKEN)
    done = subprocess.run([histoedge, "health", "--server", address], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "SERVING" in done.stdout
    env["HISTOEDGE_AUTH_TOKEN"] = OTHER
    done = subprocess.run([histoedge, "health", "--server", address], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0


@pytest.mark.parametrize("options, words", [
    ({"metrics_tls": True}, "--metrics-tls needs --tls-cert"),
    ({"auth_token": TOKEN, "auth_token_file": "t"}, "not both"),
    ({"auth_health": True}, "--auth-health needs"),
    ({"max_request_images": 0}, "--max-request-images must be at least 1"),
    ({"decode_memory_mb": 0}, "--decode-memory-mb must be at least 1"),
])
def test_new_settings_are_validated(options, words):
    with pytest.raises(HistoedgeError, match=words):
        ServerSettings(**options)


def test_bearer_token_on_rest(repo, start_server):
    import json

    server = start_server(repo, auth_token=TOKEN, http_port=free_port())
    base = f"http://127.0.0.1:{server.http_port}"
    body = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 16, 16, 3],
                                   "data": sample_images(1).reshape(-1).tolist()}]}).encode()
    url = f"{base}/v2/models/tiny/infer"
    for headers in ({}, {"Authorization": f"Bearer {OTHER}"}):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=10)
        assert caught.value.code == 401
    answer = urllib.request.urlopen(urllib.request.Request(
        url, body, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}), timeout=10)
    assert answer.status == 200 and "outputs" in json.loads(answer.read())
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10).status == 200  # probes stay open
