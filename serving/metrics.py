"""Prometheus metrics of the server, registered in a registry the caller owns.

Passing the registry in (instead of using prometheus_client's global one) keeps
servers in one process, such as tests, independent of each other.

Example::

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    metrics.requests.labels(model="breast", version="3", outcome="ok", protocol="grpc").inc()
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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

    def serve_http(self, host: str, port: int):
        """Expose ``/metrics`` over HTTP; return the HTTP server (call ``shutdown()`` to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
