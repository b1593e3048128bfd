"""Internal request, response and metadata types of the data plane (no protobuf here).

The servicer converts protobuf messages to these and back; everything between
works on numpy arrays.  ``BYTES`` tensors are numpy object arrays of ``bytes``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tensor:
    """A named tensor with its Open Inference Protocol datatype."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


class CancelToken:
    """Set by the transport when the client goes away; runs callbacks once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def add_callback(self, callback) -> None:
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@dataclass
class InferenceRequest:
    """One ModelInfer call.

    Args:
        model_name: model to use ("" = the only model when the server has one).
        model_version: version to use ("" = the highest loaded).
        inputs: input tensors.
        outputs: names of requested outputs (empty = all).
        id: echoed in the response.
        deadline: ``time.monotonic()`` value after which the answer is useless, or None.
        cancel: fired when the client goes away.
        protocol: the transport that received it ("grpc", "rest"); labels the request metrics.
        parameters: request parameters (bool, int, float or str), e.g. ``abstain``.
    """

    model_name: str
    model_version: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    id: str = ""
    deadline: float | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    protocol: str = "internal"
    parameters: dict[str, bool | int | float | str] = field(default_factory=dict)


@dataclass
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    parameters: dict[str, str | int | float | bool] = field(default_factory=dict)

