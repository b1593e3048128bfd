"""The ``histoedge`` command line: one subcommand per job.

Each stage (``training``, ``export``, ``serving``) owns a ``cli`` module that
only imports :mod:`argparse` at import time and registers its subcommands with
:func:`register`.  A subcommand names its handler as ``"module:function"``; the
handler's module is imported only when that subcommand runs, so
``histoedge --help`` and ``histoedge serve`` never import TensorFlow.

Example::

    histoedge data synth --out data/synth --n 600 --size 64
    histoedge train --data data/synth --out runs/r1 --epochs 8 --image-size 64
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from histoedge import HistoedgeError, __version__

STAGE_CLIS = ("histoedge.training.cli", "histoedge.export.cli", "histoedge.serving.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histoedge",
        description="Train, export and serve regularised CNN ensembles for histopathology.",
    )
    parser.add_argument("--version", action="version", version=f"histoedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(subparsers)
    _register_demo(subparsers)
    return parser


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole product on the synthetic dataset: data, ensemble, int8 export, "
                     "server, classification over gRPC")
    demo.add_argument("--workdir", default="demo", help="folder for data, run and models (default ./demo)")
    demo.add_argument("--n", type=int, default=1500, help="synthetic images (default 1500)")
    demo.add_argument("--image-size", type=int, default=64, help="model input size (default 64)")
    demo.add_argument("--classify", type=int, default=8, help="held-out images to classify (default 8)")
    demo.add_argument("--precision", default="int8", choices=("fp32", "int8"))
    demo.set_defaults(handler="histoedge.serving.demo:cli_demo")


def _resolve(handler: str):
    module_name, _, function_name = handler.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    # HISTOEDGE_LOG_LEVEL=WARNING quiets the INFO lines (``histoedge demo`` sets it for its steps)
    default_level = os.environ.get("HISTOEDGE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, default_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(_resolve(handler)(args) or 0)
    except HistoedgeError as error:
        print(f"histoedge {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"histoedge {args.command}: interrupted", file=sys.stderr)
        return 130

