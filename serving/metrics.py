"""Prometheus metrics of the server, registered in a registry the caller owns.

Passing the registry in (instead of using prometheus_client's global one) keeps
servers in one process, such as tests, independent of each other.

Example::

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    metrics.requests.labels(model="breast", version="3", outcome="ok", protocol="grpc").inc()
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics import MetricWrapperBase

from histoedge.serving.auth import TokenAuth

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Counters, histograms and gauges of one server.

    Args:
        registry: where the metrics are registered.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ("model", "version")
        self.requests = Counter(
            "histoedge_requests", "inference requests by outcome and protocol (grpc, rest)",
            labels + ("outcome", "protocol"), registry=registry)
        self.queue_seconds = Histogram(
            "histoedge_queue_seconds", "time a request waited for its batch to start",
            labels, buckets=_LATENCY_BUCKETS, registry=registry)
        self.inference_seconds = Histogram(
            "histoedge_inference_seconds", "time of one session.run on a merged batch",
            labels, buckets=_LATENCY_BUCKETS, registry=registry)
        self.request_seconds = Histogram(
            "histoedge_request_seconds", "total time of an inference request in the server, by protocol",
            labels + ("protocol",), buckets=_LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram(
            "histoedge_batch_size", "rows per session.run", labels,
            buckets=_BATCH_BUCKETS, registry=registry)
        self.model_ready = Gauge(
            "histoedge_model_ready", "1 when the model version is loaded and warmed up",
            labels, registry=registry)
        self.stain_fallbacks = Counter(
            "histoedge_stain_fallbacks", "images served without stain normalisation because the method "
            "cannot handle them (reason: background, no colour, one stain, not a stain)",
            labels + ("reason",), registry=registry)
        self.queue_depth = Gauge(
            "histoedge_queue_depth", "requests waiting for a batch", labels, registry=registry)

    def forget(self, model: str, version: int | str) -> None:
        """Drop every series of one model version (unloaded, deleted or failed to load)."""
        labels = {"model": model, "version": str(version)}
        for metric in vars(self).values():
            if isinstance(metric, MetricWrapperBase) and {"model", "version"} <= set(metric._labelnames):
                metric.remove_by_labels(labels)

    def serve_http(self, host: str, port: int, tls: ssl.SSLContext | None = None,
                   auth: TokenAuth | None = None) -> WSGIServer:
        """Expose ``/metrics`` over HTTP(S); return the server (call ``shutdown()`` to stop).

        Args:
            tls: serve HTTPS with this context (it decides whether client certificates are required).
            auth: require ``Authorization: Bearer <token>`` (Prometheus: ``authorization.credentials_file``).
        """
        app = make_wsgi_app(self.registry)
        if auth is not None:
            app = _token_required(app, auth)

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def handle_error(self, request, client_address) -> None:
                log.debug("metrics request from %s failed", client_address[0], exc_info=True)

        server = make_server(host, port, app, Server, handler_class=_QuietHandler)
        if tls is not None:
            # The handshake runs in the request's own thread (on first read, with the
            # handler's timeout), so a client that never speaks cannot stall the accept loop.
            server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds a client may take to send its request

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


def _token_required(app, auth: TokenAuth):
    def guarded(environ, start_response):
        if not auth.allows(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                ("WWW-Authenticate", 'Bearer realm="histoedge"')])
            return [b"a bearer token is required\n"]
        return app(environ, start_response)
    return guarded
