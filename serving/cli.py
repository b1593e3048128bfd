"""Subcommands of this stage for the ``histoedge`` command line (argparse only at import time)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands; handlers are named as ``"module:function"``."""
