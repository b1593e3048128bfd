"""True labels reported after the fact, matched to earlier predictions by request id.

Only ids, class indices and model versions are kept, in memory, never image content:
:class:`PredictionLog` remembers the last ``capacity`` predicted images by
(request id, image index); :class:`Outcomes` keeps the last ``size`` labelled outcomes of a
model version and gives running sensitivity, specificity and accuracy.

Example::

    log = PredictionLog(capacity=10_000)
    log.remember("req-1", [Prediction("breast", 3, predicted=1)])
    prediction = log.find("req-1", 0)
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

MAX_ID_CHARS = 128


@dataclass(frozen=True)
class Prediction:
    """What the server answered for one image (the class before any abstention)."""

    model: str
    version: int
    predicted: int


class PredictionLog:
    """The most recent predictions by (request id, image index), bounded."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[tuple[str, int], Prediction] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, predictions: list[Prediction]) -> None:
        with self._lock:
            for index, prediction in enumerate(predictions):
                key = (request_id, index)
                self._items.pop(key, None)  # a reused id refers to its latest request
                self._items[key] = prediction
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def find(self, request_id: str, index: int) -> Prediction | None:
        with self._lock:
            return self._items.get((request_id, index))


class Outcomes:
    """The last ``size`` (predicted, true) class pairs of one model version."""

    def __init__(self, size: int, positive_class: int | None) -> None:
        self.positive_class = positive_class
        self._pairs: collections.OrderedDict[tuple[str, int], tuple[int, int]] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, key: tuple[str, int], predicted: int, true: int) -> None:
        """Record an outcome; a second report for the same image replaces the first."""
        with self._lock:
            self._pairs.pop(key, None)
            self._pairs[key] = (predicted, true)
            while len(self._pairs) > self._size:
                self._pairs.popitem(last=False)

    def rates(self) -> dict[str, float]:
        """``labels``, ``accuracy`` and, for binary models, ``sensitivity`` and ``specificity``
        (a rate is left out while its denominator is zero)."""
        with self._lock:
            pairs = list(self._pairs.values())
        result = {"labels": float(len(pairs))}
        if not pairs:
            return result
        result["accuracy"] = sum(p == t for p, t in pairs) / len(pairs)
        positive = self.positive_class
        if positive is not None:
            actual_positive = [p for p, t in pairs if t == positive]
            actual_negative = [p for p, t in pairs if t != positive]
            if actual_positive:
                result["sensitivity"] = sum(p == positive for p in actual_positive) / len(actual_positive)
            if actual_negative:
                result["specificity"] = sum(p != positive for p in actual_negative) / len(actual_negative)
        return result
