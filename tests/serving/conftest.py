"""Fixtures for the serving tests: a tiny model repository and in-process servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from histoedge.serving.server import InferenceServer
from histoedge.serving.settings import ServerSettings
from tests.support.model_packages import write_model_version
from tests.serving.helpers import MODEL, SIZE, free_port


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model_version(root, MODEL, 1, size=SIZE)
    return root


@pytest.fixture
def start_server():
    """Factory: start an in-process server on a free loopback port; stopped after the test."""
    servers: list[InferenceServer] = []

    def start(repo: Path, run_hook=None, **options) -> InferenceServer:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("metrics_port", 0)
        options.setdefault("http_port", 0)
        options.setdefault("poll_seconds", 0)
        options.setdefault("threads", 1)
        server = InferenceServer(ServerSettings(repo=repo, **options), CollectorRegistry(), run_hook)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop(grace=1)


@pytest.fixture(scope="module")
def module_server(repo):
    """One plain server per test module."""
    server = InferenceServer(ServerSettings(repo=repo, host="127.0.0.1", port=0, metrics_port=0,
                                            http_port=0, poll_seconds=0, threads=1), CollectorRegistry()).start()
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def address(module_server) -> str:
    return f"127.0.0.1:{module_server.port}"


@pytest.fixture(scope="module")
def http_server(repo):
    """One server per test module with both transports (gRPC and REST) on free loopback ports."""
    server = InferenceServer(ServerSettings(repo=repo, host="127.0.0.1", port=0, metrics_port=0,
                                            http_port=free_port(), poll_seconds=0, threads=1),
                             CollectorRegistry()).start()
    yield server
    server.stop(grace=1)
