"""Monitoring work done after the answer has gone: one thread, a bounded queue of jobs.

Drift windows and quality tallies need every image's features, but the client does not:
unless a request asks for its ``quality`` output or for abstention, its images are
assessed here, a whole batch at a time, after the batcher has delivered the results.  So
monitoring is off the request's latency path and its numpy work runs once per batch
instead of once per request.  When the queue is full (the server is saturated and
monitoring has fallen behind) a job is refused and its images are counted as skipped,
never queued without bound.  :meth:`BackgroundObserver.drain` lets a metrics scrape wait
for the jobs already queued, so a scrape taken after a response includes its images.

With ``linger_s`` a job waits that long after it was queued before it runs, unless
someone is draining or called :meth:`BackgroundObserver.hurry`: a job that works through
whatever piled up meanwhile (monitoring's) then handles many requests at once instead of
one per wake-up.

Example::

    observer = BackgroundObserver(max_jobs=64, linger_s=0.05)
    accepted = observer.submit(lambda: expensive_bookkeeping())
    observer.drain(timeout=2.0)     # runs it now; True when nothing is left to do
    observer.close()
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


class BackgroundObserver:
    """A daemon thread running submitted jobs in order; at most ``max_jobs`` waiting.

    Args:
        max_jobs: jobs that may wait; :meth:`submit` refuses more.
        name: the thread's name.
        linger_s: how long after it was queued a job runs at the earliest (0: at once).
    """

    def __init__(self, max_jobs: int = 64, name: str = "monitoring", linger_s: float = 0.0) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, not {max_jobs}")
        if not 0.0 <= linger_s <= 60.0:
            raise ValueError(f"linger_s must be between 0 and 60 seconds, not {linger_s}")
        self.max_jobs = max_jobs
        self.linger_s = linger_s
        self._jobs: collections.deque[tuple[float, Callable[[], None]]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._hurried = False  # run the queued jobs without lingering, until the queue is empty
        self._draining = 0
        self._thread: threading.Thread | None = None
        self._name = name

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (not queued) when ``max_jobs`` are waiting or the observer is closed."""
        with self._cond:
            if self._closed or len(self._jobs) >= self.max_jobs:
                return False
            if self._thread is None:  # started on first use: a server without traffic has no thread
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.append((time.monotonic(), job))
            self._cond.notify_all()
            return True

    def hurry(self) -> None:
        """Run the jobs queued now without waiting out ``linger_s``."""
        with self._cond:
            if self._jobs:
                self._hurried = True
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Run the queued jobs now and wait up to ``timeout`` seconds for them; True when none is left."""
        end = time.monotonic() + timeout
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._jobs or self._busy:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
                return True
            finally:
                self._draining -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued jobs (up to ``timeout``) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                due = self._jobs[0][0] + self.linger_s
                while not (self._closed or self._hurried or self._draining):
                    remaining = due - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                job = self._jobs.popleft()[1]
                self._hurried = self._hurried and bool(self._jobs)
                self._busy = True
            try:
                job()
            except Exception:  # noqa: BLE001 - monitoring must never stop serving
                log.exception("monitoring job failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
