"""Serving-stage subcommands: ``serve``, ``classify``, ``health`` and ``slide`` (argparse only at import time)."""

from __future__ import annotations

import argparse

from histoedge.serving.settings import ServerSettings, bool_option


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ServerSettings` field, generated from the field and its help.

    Every option is also read from ``HISTOEDGE_<NAME>`` (flags win), so no flag has a
    default here: None means "not given" and :meth:`ServerSettings.from_sources` fills in
    the environment and the field's default.
    """
    for option in ServerSettings.options():
        flag = "--" + option.name.replace("_", "-")
        text = f"{option.metadata['help']} (default {ServerSettings.default_text(option)}; " \
               f"env {ServerSettings.env_name(option)})"
        if option.metadata["convert"] is bool_option:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, metavar=option.metadata.get("metavar"), help=text)


class _ServerList(argparse.Action):
    """``--server`` may repeat: the addresses are kept as one comma-separated string, which
    :class:`histoedge.serving.client.InferenceClient` balances over."""

    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{previous},{values}" if previous else values)


def _add_tls_client_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--server", required=required, action=_ServerList, metavar="HOST:PORT",
                        help="server address; repeat it (or separate with commas) for several replicas, "
                             "or give one dns:///NAME:PORT target: calls are spread round-robin over the "
                             "healthy ones and a call failing with UNAVAILABLE is retried on the next")
    parser.add_argument("--tls-ca", help="CA certificate (PEM) to verify the server; enables TLS")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``classify`` and ``health``; handlers are named as ``"module:function"``."""
    serve = subparsers.add_parser(
        "serve", help="serve a model repository over gRPC (Open Inference Protocol)",
        description="Serve every model in a repository over the Open Inference Protocol (gRPC). "
                    "Every option can also be set as HISTOEDGE_<OPTION> (e.g. HISTOEDGE_PORT); "
                    "flags win. SIGHUP rescans the repository; SIGTERM drains and exits.")
    add_settings_flags(serve)
    serve.set_defaults(handler="histoedge.serving.server:cli_serve")

    classify = subparsers.add_parser(
        "classify", help="classify image files or folders with a running server")
    _add_tls_client_flags(classify)
    classify.add_argument("--model", default=None,
                          help="model name (default: the server's only model)")
    classify.add_argument("--version", dest="model_version", default="", metavar="V",
                          help="model version (default: the highest)")
    classify.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    classify.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    classify.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    classify.set_defaults(handler="histoedge.serving.client:cli_classify")

    feedback = subparsers.add_parser(
        "feedback", help="report the true label of an image classified earlier (running sensitivity etc.)",
        description="Report the true label of an earlier request's image, by the request id the "
                    "server answered with; the server updates the running sensitivity, specificity "
                    "and accuracy of the model version that answered (Prometheus metrics).")
    _add_tls_client_flags(feedback)
    feedback.add_argument("--index", type=int, default=0, help="image position in the request (default 0)")
    feedback.add_argument("id", metavar="ID", help="request id (ModelInferResponse.id)")
    feedback.add_argument("label", metavar="LABEL", help="true class name")
    feedback.set_defaults(handler="histoedge.serving.client:cli_feedback")

    check = subparsers.add_parser(
        "health", help="exit 0 only if the server's gRPC health check says SERVING")
    _add_tls_client_flags(check)
    check.set_defaults(timeout=5.0)
    check.add_argument("--service", default="", help="health service name (default: whole server)")
    check.set_defaults(handler="histoedge.serving.client:cli_health")
    _register_slide(subparsers)


def _register_slide(subparsers: argparse._SubParsersAction) -> None:
    slide = subparsers.add_parser("slide", help="whole-slide images: describe them, predict them")
    slide_sub = slide.add_subparsers(dest="slide_command", metavar="SLIDE_COMMAND", required=True)
    info = slide_sub.add_parser(
        "info", help="vendor, pyramid levels, pixel size, objective power and associated images",
        description="Describe slides (every format OpenSlide reads). One line per problem; "
                    "exit 1 if any slide cannot be read.")
    info.add_argument("slides", nargs="+", metavar="SLIDE")
    info.add_argument("--json", action="store_true", help="one JSON object per slide")
    info.set_defaults(handler="histoedge.serving.slides.reader:cli_info")

    predict = slide_sub.add_parser(
        "predict", help="classify the tissue of whole slides; heatmap, GeoJSON, CSV and summary",
        description="Find tissue, cut it into tiles of the model's training field of view, classify "
                    "them in process (--model) or on a running server (--server), and write "
                    "DIR/<slide>/tiles.csv, heatmap.png, annotations.geojson and summary.json. "
                    "A slide that fails is reported and the others are still predicted.")
    predict.add_argument("slides", nargs="+", metavar="SLIDE")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder")
    predict.add_argument("--model", metavar="MODELS/NAME[/VERSION]",
                         help="run this model package in process with onnxruntime")
    _add_tls_client_flags(predict, required=False)
    predict.add_argument("--model-name", default=None, metavar="NAME",
                         help="--server: model name (default: the server's only model)")
    predict.add_argument("--transport", choices=("stream", "unary"), default="stream",
                         help="--server: one ModelStreamInfer stream (default) or concurrent "
                              "ModelInfer calls")
    predict.add_argument("--mpp", type=float, default=None, metavar="MICRONS",
                         help="level-0 microns per pixel of the slides (default: from their metadata)")
    predict.add_argument("--force", action="store_true",
                         help="predict even if the slide's resolution is more than 1.25x coarser than "
                              "the model's, or the model records no field of view")
    predict.add_argument("--batch-size", type=int, default=32, help="tiles per request (default 32)")
    predict.add_argument("--concurrency", type=int, default=None,
                         help="batches in flight (default 4 with --server, 1 with --model)")
    predict.add_argument("--threads", type=int, default=None,
                         help="--model: onnxruntime threads (default min(4, CPUs))")
    predict.add_argument("--min-tissue", type=float, default=0.5, metavar="FRACTION",
                         help="skip tiles with less tissue than this (default 0.5)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(handler="histoedge.serving.slides.predict:cli_predict")
