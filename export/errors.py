"""Errors of the export stage and of the model package contract, under :class:`histoedge.HistoedgeError`.

Standard library only: the server reads manifests, so :class:`ManifestError` must be
importable without TensorFlow, tf2onnx or onnx.
"""

from __future__ import annotations

from histoedge import HistoedgeError


class ExportError(HistoedgeError):
    """An export cannot proceed (bad input, existing version, failed check)."""


class ManifestError(ExportError, ValueError):
    """A manifest is missing, malformed, or does not match its model file.

    Also a :class:`ValueError`, as it always was, for callers that catch that.
    """


class EnsembleSpecError(ExportError, ValueError):
    """An ``ensemble.json`` that is missing, malformed, or whose fields do not fit each other."""


class SignatureError(ExportError):
    """A model package's signature is missing, malformed, made by an untrusted key, or wrong."""
