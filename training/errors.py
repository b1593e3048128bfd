"""Errors of the training stage, all under :class:`histoedge.HistoedgeError`.

The command line prints any of them as one line and exits with status 2
(3 for :class:`RunConfigChanged`, so that scripts can tell it apart).
"""

from __future__ import annotations

from histoedge import HistoedgeError


class TrainingError(HistoedgeError):
    """Base class of the training stage's errors."""


class ConfigError(TrainingError):
    """A configuration key or value that cannot be used."""


class DataError(TrainingError):
    """A dataset that cannot be used as given: missing folder, no images, one class, bad split."""


class EnsembleError(TrainingError):
    """An ensemble that cannot be fitted or an ensemble.json that cannot be read."""


class RunError(TrainingError):
    """A run directory that cannot be (re)used as asked."""


class RunConfigChanged(RunError):
    """The --out folder holds a run trained with another configuration, so it cannot be resumed."""

    exit_status = 3


class ReportError(TrainingError):
    """A run directory that lacks what the report needs."""
