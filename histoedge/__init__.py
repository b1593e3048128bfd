"""histoedge: regularised CNN ensembles for histopathology, from training to an edge server.

The distribution installs one top-level package, ``histoedge``, with the stages as
sub-packages: :mod:`histoedge.training`, :mod:`histoedge.export` and
:mod:`histoedge.serving` (their sources live in the repository's top-level
``training/``, ``export/`` and ``serving/`` folders).  The command line is
:mod:`histoedge.cli`.  This module holds only the version and the root of the
error hierarchy, so importing it costs nothing.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["HistoedgeError", "__version__"]


class HistoedgeError(Exception):
    """A problem with the user's input or environment.

    The command line prints the message on one line and exits with ``exit_status``
    (2 unless a subclass says otherwise), without a traceback.  Library callers can
    catch it like any exception; each stage derives its own errors from it
    (``histoedge.<stage>.errors``).
    """

    exit_status = 2
