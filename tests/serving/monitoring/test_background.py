"""The background observer that assesses deferred requests after they are answered."""

from __future__ import annotations

import threading
import time

import pytest

from histoedge.serving.monitoring.background import BackgroundObserver


def test_jobs_run_in_order_and_drain_waits_for_them():
    observer = BackgroundObserver(max_jobs=8)
    done, gate = [], threading.Event()
    assert observer.submit(gate.wait)
    for index in range(5):
        assert observer.submit(lambda index=index: done.append(index))
    assert not observer.drain(timeout=0.05)  # the first job still blocks the rest
    gate.set()
    assert observer.drain(timeout=5)
    assert done == [0, 1, 2, 3, 4]
    observer.close()


def test_a_full_queue_refuses_and_a_failing_job_does_not_stop_the_thread():
    observer = BackgroundObserver(max_jobs=2)
    gate, started, done = threading.Event(), threading.Event(), []

    def block():
        started.set()
        gate.wait()

    assert observer.submit(block)
    assert started.wait(5)  # running, so no longer waiting
    assert observer.submit(lambda: done.append("a")) and observer.submit(lambda: 1 / 0)
    assert not observer.submit(lambda: done.append("refused"))  # two are waiting: full
    gate.set()
    assert observer.drain(timeout=5)
    assert observer.submit(lambda: done.append("after the failure"))
    observer.close()
    assert done == ["a", "after the failure"]
    assert not observer.submit(lambda: done.append("closed"))


def test_no_thread_until_the_first_job_and_the_size_is_checked():
    observer = BackgroundObserver(max_jobs=1, name="monitoring-test")
    assert "monitoring-test" not in {thread.name for thread in threading.enumerate()}
    assert observer.drain(timeout=0)
    observer.close()
    with pytest.raises(ValueError):
        BackgroundObserver(max_jobs=0)


def test_a_job_lingers_unless_hurried_or_drained():
    observer = BackgroundObserver(max_jobs=8, linger_s=30.0)
    ran = threading.Event()
    assert observer.submit(ran.set)
    assert not ran.wait(0.2)  # lingering
    observer.hurry()
    assert ran.wait(5)
    ran.clear()
    assert observer.submit(ran.set)
    started = time.monotonic()
    assert observer.drain(timeout=5) and ran.is_set()
    assert time.monotonic() - started < 5
    observer.close()
    with pytest.raises(ValueError):
        BackgroundObserver(linger_s=-1)


def _monitoring(max_pending: int = 256, linger_s: float = 0.0):
    from types import SimpleNamespace

    import numpy as np
    from prometheus_client import CollectorRegistry

    from histoedge.serving.monitoring.monitor import Monitoring
    from histoedge.serving.settings import ServerSettings

    manifest = SimpleNamespace(name="m", version=1, classes=("benign", "malignant"), positive_class=1,
                               uncertainty_band=None)
    model = SimpleNamespace(manifest=manifest, name="m", version=1, profile=None,
                            predicted_classes=lambda p: (p[:, 1] >= 0.5).astype(int))
    registry, observer = CollectorRegistry(), BackgroundObserver(max_jobs=1, linger_s=linger_s)
    monitoring = Monitoring(ServerSettings(), registry, background=observer, max_pending=max_pending)
    return model, registry, observer, monitoring, np


def test_batches_refused_by_a_full_queue_are_counted_as_skipped():
    model, registry, observer, monitoring, np = _monitoring(max_pending=1)
    gate, started = threading.Event(), threading.Event()
    assert observer.submit(lambda: (started.set(), gate.wait()))
    assert started.wait(5)
    rows = np.zeros((6, 8, 8, 3), np.uint8)
    outputs = {"probabilities": np.tile([[0.2, 0.8]], (6, 1))}
    parts = [(2, ()), (3, None), (1, ())]  # the middle request was assessed in its own thread
    monitoring.observe_batch(model, rows, outputs, parts)   # queued (3 deferred rows)
    monitoring.observe_batch(model, rows, outputs, parts)   # refused: one batch is waiting, the limit
    gate.set()
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("histoedge_quality_images_total", labels) == 3
    assert registry.get_sample_value("histoedge_quality_skipped_images_total", labels) == 3
    assert registry.get_sample_value("histoedge_positive_rate", {**labels, "window": "count"}) == 1.0
    monitoring.close()


def test_deferred_batches_waiting_together_are_assessed_in_one_call_in_order(monkeypatch):
    from histoedge.serving.monitoring import quality

    model, registry, observer, monitoring, np = _monitoring(linger_s=30.0)
    calls, assess = [], quality.assess
    monkeypatch.setattr(quality, "assess", lambda rows, *args: (calls.append(len(rows)), assess(rows, *args))[1])
    generator = np.random.default_rng(0)
    batches = [generator.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8) for count in (1, 2, 1)]
    for index, rows in enumerate(batches):
        probabilities = np.tile([[0.9, 0.1]] if index == 1 else [[0.1, 0.9]], (len(rows), 1))
        # the first batch's request knows its source's aspect ratio, the others do not
        monitoring.observe_batch(model, rows, {"probabilities": probabilities}, [(len(rows), (1.0,) if index == 0
                                                                                   else ())])
    assert calls == []  # lingering: nothing assessed yet
    labels = {"model": "m", "version": "1"}
    assert registry.get_sample_value("histoedge_quality_images_total", labels) == 4  # the scrape drains
    assert calls == [4]
    window = monitoring.monitor(model).rows.last(10)
    assert window[:, -2].tolist() == [1.0, 0.0, 0.0, 1.0]  # positive or not, in arrival order
    monitoring.close()
