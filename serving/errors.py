"""Errors of the serving stage.

Each error names what went wrong in words a client can act on.  The transports
map them to status codes, each in one table: gRPC codes in
``serving.servicer.STATUS_CODES``, HTTP codes in ``serving.rest.HTTP_STATUS`` (a test
keeps the two covering the same errors), so the data plane never needs to know
about either protocol.
"""

from __future__ import annotations

from histoedge import HistoedgeError


class ServingError(HistoedgeError):
    """Base class of every error a request can cause.

    ``outcome`` labels the request counter of the metrics.
    """

    outcome = "error"


class ModelLoadError(ServingError):
    """A model version could not be loaded (bad manifest, checksum, graph or warm-up)."""

    outcome = "load_error"


class InvalidInputError(ServingError):
    """Wrong input name, datatype or shape, bad tensor contents, or an unusable image."""

    outcome = "invalid_input"


class ModelNotFoundError(ServingError):
    """The request names a model or version the server does not serve."""

    outcome = "not_found"


class ModelNotReadyError(ServingError):
    """The model exists but no version of it is loaded yet."""

    outcome = "not_ready"


class QueueFullError(ServingError):
    """The model's request queue is at its limit; retry later."""

    outcome = "queue_full"


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was answered."""

    outcome = "deadline_exceeded"


class CancelledError(ServingError):
    """The client cancelled the request."""

    outcome = "cancelled"


class ServerClosingError(ServingError):
    """The server is shutting down and takes no new work."""

    outcome = "closing"


class SlideError(HistoedgeError):
    """A whole-slide image cannot be read or tiled (not a slide, truncated, no pixel size,
    a resolution the model cannot use, no tissue).  Raised by the slide client, not the server."""
