"""TLS and mutual TLS with certificates made here by the openssl command line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

import histoedge.cli
from histoedge.serving.client import InferenceClient
from tests.serving.helpers import MODEL, sample_images


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue(name: str, cwd: Path, extensions: str) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-sha256", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=histoedge test CA", cwd=folder)
    issue("server", folder, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    issue("client", folder, "extendedKeyUsage=clientAuth\n")
    return folder


def test_tls(repo, start_server, certs):
    server = start_server(repo, tls_cert=certs / "server.pem", tls_key=certs / "server.key")
    address = f"127.0.0.1:{server.port}"
    with InferenceClient(address, tls_ca=certs / "ca.pem") as client:
        assert client.health() == "SERVING"
        assert client.classify_arrays(sample_images(1), MODEL)[0].label
    with InferenceClient(address, timeout=2) as plaintext:
        with pytest.raises(grpc.RpcError) as caught:
            plaintext.server_live()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert histoedge.cli.main(["health", "--server", address, "--tls-ca", str(certs / "ca.pem")]) == 0


def test_mutual_tls(repo, start_server, certs):
    server = start_server(repo, tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                          tls_client_ca=certs / "ca.pem")
    address = f"127.0.0.1:{server.port}"
    with InferenceClient(address, tls_ca=certs / "ca.pem", tls_cert=certs / "client.pem",
                         tls_key=certs / "client.key") as client:
        assert client.model_ready(MODEL)
        assert client.classify_arrays(sample_images(2), MODEL)[1].label
    with InferenceClient(address, tls_ca=certs / "ca.pem", timeout=2) as anonymous:
        with pytest.raises(grpc.RpcError) as caught:
            anonymous.server_live()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    tls = ["--tls-ca", str(certs / "ca.pem")]
    mtls = tls + ["--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key")]
    assert histoedge.cli.main(["health", "--server", address, *mtls]) == 0
    assert histoedge.cli.main(["health", "--server", address, "--timeout", "2", *tls]) == 1


def test_rest_uses_the_same_certificates(repo, start_server, certs):
    import ssl
    import urllib.error

    from tests.serving.helpers import free_port, http

    server = start_server(repo, http_port=free_port(), tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                          tls_client_ca=certs / "ca.pem")
    url = f"https://127.0.0.1:{server.http_port}/v2/models/{MODEL}/ready"
    verified = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    verified.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    assert http(url, context=verified)[0] == 200
    anonymous = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # no client certificate
        http(url, context=anonymous, timeout=5)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plaintext on the TLS port
        http(url.replace("https:", "http:"), timeout=5)


def test_metrics_over_https_with_client_certificates(repo, start_server, certs):
    import ssl
    import urllib.request

    from tests.serving.helpers import free_port

    port = free_port()
    start_server(repo, tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                 tls_client_ca=certs / "ca.pem", metrics_port=port, metrics_tls=True)
    url = f"https://127.0.0.1:{port}/metrics"
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises(OSError):  # no client certificate: the handshake fails
        urllib.request.urlopen(url, timeout=5, context=context).read()
    context.load_cert_chain(certs / "client.pem", certs / "client.key")
    assert b"histoedge_model_ready" in urllib.request.urlopen(url, timeout=5, context=context).read()
    with pytest.raises(OSError):  # and plain HTTP is not answered
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
