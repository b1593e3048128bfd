"""Sliding windows of features and predictions, compared with the reference by PSI.

Each model version keeps two windows of what it has seen: the last N images (exact) and
the last T seconds (in :data:`TIME_SLOTS` slots, so memory does not grow with traffic).
A window holds, per stream (feature or prediction), how many images fell in each of the
reference's decile bins, plus how many predictions were positive and how many fell in
the uncertainty band.  The population stability index of a stream is

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the reference share of bin i and ``a_i`` the window's share (counts smoothed by
half an image per bin, so an empty bin does not make it infinite).  Rule of thumb: below
0.1 stable, 0.1-0.25 moderate shift, above 0.25 a major shift.  A window of n images from
the reference itself has an expected PSI of about (bins - 1) / n.

Example::

    window = CountWindow(streams=3, size=500)
    window.add(bins_row, positive=True, uncertain=False)
    psi(window.counts[0], reference_fractions)
"""

from __future__ import annotations

import collections
import math
import time

import numpy as np

from histoedge.serving.monitoring.profile import BINS

TIME_SLOTS = 30
_SMOOTHING = 0.5
_MIN_REFERENCE_SHARE = 1e-3


def psi(counts: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of window ``counts`` against reference shares (same bins)."""
    counts = np.asarray(counts, dtype=np.float64)
    expected = np.maximum(np.asarray(reference, dtype=np.float64), _MIN_REFERENCE_SHARE)
    expected = expected / expected.sum()
    actual = (counts + _SMOOTHING) / (counts.sum() + _SMOOTHING * len(counts))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class _Totals:
    """Bin counts [streams, BINS] and the prediction tallies of a set of images."""

    def __init__(self, streams: int) -> None:
        self.counts = np.zeros((streams, BINS), dtype=np.int64)
        self.images = self.positive = self.uncertain = 0

    def add(self, bins: np.ndarray, positive: int, uncertain: int, sign: int = 1) -> None:
        np.add.at(self.counts, (np.arange(bins.shape[1])[None, :], bins), sign)
        self.images += sign * len(bins)
        self.positive += sign * positive
        self.uncertain += sign * uncertain


class CountWindow:
    """The last ``size`` images."""

    def __init__(self, streams: int, size: int) -> None:
        self.totals = _Totals(streams)
        self._rows: collections.deque = collections.deque()
        self.size = size

    def add(self, bins: np.ndarray, positive: np.ndarray, uncertain: np.ndarray) -> None:
        """Add images: ``bins`` int [n, streams], ``positive`` and ``uncertain`` bool [n]."""
        for row in zip(bins, positive, uncertain):
            self._rows.append(row)
        self.totals.add(bins, int(positive.sum()), int(uncertain.sum()))
        while len(self._rows) > self.size:
            old, was_positive, was_uncertain = self._rows.popleft()
            self.totals.add(old[None, :], int(was_positive), int(was_uncertain), sign=-1)

    def snapshot(self) -> _Totals:
        return self.totals


class TimeWindow:
    """The images of the last ``seconds``, kept as :data:`TIME_SLOTS` slot totals."""

    def __init__(self, streams: int, seconds: float, clock=time.monotonic) -> None:
        self.streams = streams
        self.slot_seconds = seconds / TIME_SLOTS
        self._clock = clock
        self._slots: collections.deque[tuple[int, _Totals]] = collections.deque()

    def add(self, bins: np.ndarray, positive: np.ndarray, uncertain: np.ndarray) -> None:
        slot = math.floor(self._clock() / self.slot_seconds)
        if not self._slots or self._slots[-1][0] != slot:
            self._slots.append((slot, _Totals(self.streams)))
        self._slots[-1][1].add(bins, int(positive.sum()), int(uncertain.sum()))
        self._expire(slot)

    def _expire(self, slot: int) -> None:
        while self._slots and self._slots[0][0] <= slot - TIME_SLOTS:
            self._slots.popleft()

    def snapshot(self) -> _Totals:
        self._expire(math.floor(self._clock() / self.slot_seconds))
        total = _Totals(self.streams)
        for _, slot in self._slots:
            total.counts += slot.counts
            total.images += slot.images
            total.positive += slot.positive
            total.uncertain += slot.uncertain
        return total
