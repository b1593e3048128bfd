"""What the status page shows: models from the data plane, traffic from the Prometheus metrics.

Request rate and latency percentiles are computed the way Prometheus' ``rate`` and
``histogram_quantile`` would: from the difference between the current counters and a
snapshot about ``window_s`` seconds old, so the page shows recent traffic, not the
average since start.

Example::

    status = StatusReport(plane, metrics, grpc_port=8001)
    status.collect()["models"][0]["traffic"]["p95_ms"]
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass

from histoedge.serving.dataplane import DataPlane
from histoedge.serving.errors import ServingError
from histoedge.serving.metrics import ServerMetrics

Key = tuple[str, str]  # (model, version)
QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}


@dataclass
class _Snapshot:
    at: float
    requests: dict[Key, dict[str, float]]         # outcome or "protocol:<name>" -> count
    buckets: dict[Key, dict[float, float]]        # upper bound -> cumulative count


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``buckets`` (upper bound -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the largest finite bucket: its bound is the best estimate
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class StatusReport:
    """Builds the status page's JSON; keeps a few snapshots of the counters for rates.

    Args:
        dataplane: the models and their readiness.
        metrics: the server's metrics (the same ones ``/metrics`` exports).
        window_s: how far back rates and percentiles look.
        ports: what listens where, shown on the page (e.g. ``{"grpc": 8001}``).
    """

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics, window_s: float = 60.0,
                 ports: dict[str, int] | None = None) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.window_s = window_s
        self.ports = dict(ports or {})
        self.started = time.monotonic()
        self._lock = threading.Lock()
        # Before any traffic every counter was zero: the first baseline is the server's start.
        self._history: collections.deque[_Snapshot] = collections.deque([_Snapshot(self.started, {}, {})])

    def _snapshot(self) -> _Snapshot:
        requests: dict[Key, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        buckets: dict[Key, dict[float, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        for family in self.metrics.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    counts = requests[(labels["model"], labels["version"])]
                    counts[labels["outcome"]] += sample.value
                    counts["protocol:" + labels["protocol"]] += sample.value
        for family in self.metrics.request_seconds.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    labels = sample.labels
                    buckets[(labels["model"], labels["version"])][float(labels["le"])] += sample.value
        return _Snapshot(time.monotonic(), requests, buckets)

    def _baseline(self, now: _Snapshot) -> _Snapshot:
        """The newest snapshot at least ``window_s`` old (else the start), then remember ``now``.

        Snapshots are taken when the page polls, so after a quiet spell the first baseline
        can be older than the window; the answer's ``window_s`` says what it covers.
        """
        with self._lock:
            history = self._history
            while len(history) > 1 and now.at - history[1].at >= self.window_s:
                history.popleft()
            baseline = history[0]
            if now.at - history[-1].at >= 1.0:  # at most one snapshot a second
                history.append(now)
            return baseline

    def traffic(self) -> tuple[dict[Key, dict], float]:
        """Per (model, version): requests, errors, rate and latency percentiles; and the window in s."""
        now = self._snapshot()
        before = self._baseline(now)
        seconds = max(now.at - before.at, 1e-3)
        result = {}
        for key in set(now.requests) | set(now.buckets):
            counts, old = now.requests.get(key, {}), before.requests.get(key, {})
            delta = {name: counts[name] - old.get(name, 0.0) for name in counts}
            requests = sum(v for name, v in delta.items() if not name.startswith("protocol:"))
            buckets = {b: c - before.buckets.get(key, {}).get(b, 0.0) for b, c in now.buckets.get(key, {}).items()}
            entry = {
                "window_s": round(seconds, 1),
                "requests": int(requests),
                "errors": int(requests - delta.get("ok", 0.0)),
                "rate_per_s": requests / seconds,
                "by_protocol": {name.split(":", 1)[1]: int(v) for name, v in delta.items()
                                if name.startswith("protocol:")},
                "total": int(sum(v for name, v in counts.items() if not name.startswith("protocol:"))),
            }
            for name, q in QUANTILES.items():
                value = histogram_quantile(q, buckets)
                entry[name] = None if value is None else value * 1000.0
            result[key] = entry
        return result, seconds

    def collect(self) -> dict:
        """Everything the status page shows, as JSON-ready values."""
        plane = self.dataplane
        traffic, seconds = self.traffic()
        idle = {"window_s": round(seconds, 1), "requests": 0, "errors": 0, "rate_per_s": 0.0,
                "by_protocol": {}, "total": 0, **{name: None for name in QUANTILES}}
        models = []
        for name in plane.registry.names():
            versions = plane.registry.versions(name)
            if not versions:
                models.append({"name": name, "version": None, "ready": False})
                continue
            for version in sorted(versions, reverse=True):
                try:
                    metadata = plane.model_metadata(name, str(version))
                except ServingError:  # unloaded between listing and reading
                    continue
                p = metadata.parameters
                models.append({
                    "name": name, "version": str(version), "ready": plane.model_ready(name, str(version)),
                    "serving": version == max(versions), "precision": p.get("precision"),
                    "providers": str(p.get("providers", "")).split(","),
                    "classes": str(p.get("classes", "")).split(","),
                    "threshold": p.get("threshold"), "positive_class": p.get("positive_class"),
                    "sha256": p.get("sha256"), "image_size": p.get("image_size"),
                    "max_batch_size": p.get("max_batch_size"), "members": p.get("members"),
                    "traffic": traffic.get((name, str(version)), idle),
                })
        server = plane.server_metadata()
        return {"server": {**server, "live": plane.live(), "ready": plane.ready(),
                           "uptime_s": round(time.monotonic() - self.started, 1), "ports": self.ports},
                "window_s": self.window_s, "models": models}
