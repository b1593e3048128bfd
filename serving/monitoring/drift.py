"""Sliding windows of features and predictions, compared with the reference by PSI.

Each model version keeps the rows it has seen (one row per image: the monitored features,
the prediction values, whether the prediction was positive and whether it fell inside the
uncertainty band) in a ring buffer with their arrival times.  Two windows are read from
it at scrape time: the last N images (``count``) and the images of the last T seconds
(``time``, at most the buffer's capacity).  The request path only writes rows; binning and
statistics happen when Prometheus scrapes, so they cost nothing per request.

The population stability index of a stream against its reference bins is

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the reference share of bin i and ``a_i`` the window's share (counts smoothed by
half an image per bin, so an empty bin does not make it infinite).  Rule of thumb: below
0.1 stable, 0.1-0.25 moderate shift, above 0.25 a major shift.  A window of n images drawn
from the reference itself has an expected PSI of about (bins - 1) / n.

Example::

    window = RowWindow(columns=3, capacity=10_000)
    window.add(rows)                           # float [n, 3]
    recent = window.last(500); timed = window.since(time.monotonic() - 900)
"""

from __future__ import annotations

import threading
import time

import numpy as np

_SMOOTHING = 0.5
_MIN_REFERENCE_SHARE = 1e-3


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of window ``counts`` against reference shares (same bins)."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = np.maximum(np.asarray(reference, dtype=np.float64), _MIN_REFERENCE_SHARE)
    expected = expected / expected.sum()
    actual = (counts + _SMOOTHING) / (counts.sum() + _SMOOTHING * len(counts))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class RowWindow:
    """The last ``capacity`` rows with their arrival times, in a ring buffer (thread-safe).

    Args:
        columns: values per row.
        capacity: rows kept; older rows are overwritten.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, columns: int, capacity: int, clock=time.monotonic) -> None:
        self._rows = np.zeros((capacity, columns), dtype=np.float32)
        self._times = np.full(capacity, -np.inf)
        self._next = 0    # total rows ever written
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self._rows)

    def add(self, rows: np.ndarray) -> None:
        rows = rows[-self.capacity:]
        now = self._clock()
        with self._lock:
            start = self._next % self.capacity
            end = start + len(rows)
            if end <= self.capacity:
                self._rows[start:end] = rows
                self._times[start:end] = now
            else:
                split = self.capacity - start
                self._rows[start:], self._rows[:end - self.capacity] = rows[:split], rows[split:]
                self._times[start:], self._times[:end - self.capacity] = now, now
            self._next += len(rows)

    def last(self, count: int) -> np.ndarray:
        """The most recent ``count`` rows (fewer if fewer were written), oldest first."""
        with self._lock:
            count = min(count, self._next, self.capacity)
            index = (self._next - count + np.arange(count)) % self.capacity
            return self._rows[index].copy()

    def since(self, seconds: float) -> np.ndarray:
        """The rows that arrived in the last ``seconds``."""
        cutoff = self._clock() - seconds
        with self._lock:
            return self._rows[self._times >= cutoff].copy()
