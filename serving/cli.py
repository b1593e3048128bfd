"""Serving-stage subcommands: ``serve``, ``classify`` and ``health`` (argparse only at import time)."""

from __future__ import annotations

import argparse

# Every serve option is also read from HISTOEDGE_<NAME> (flags win), so no flag has a
# default here: None means "not given" and ServerSettings fills in the rest.
_SERVE_OPTIONS = (
    ("--repo", str, "model repository MODELS/<name>/<version>/ (required)"),
    ("--host", str, "address to listen on (default 0.0.0.0)"),
    ("--port", int, "gRPC port (default 8001; 0 picks a free one)"),
    ("--metrics-port", int, "Prometheus /metrics HTTP port (default 8002; 0 disables)"),
    ("--device", str, "auto|cpu|cuda|tensorrt (default auto: TensorRT, CUDA, CPU as available)"),
    ("--max-batch-size", int, "largest merged batch (default 16; 1 disables batching)"),
    ("--max-queue-delay-ms", float, "longest wait for a batch to fill (default 2)"),
    ("--batch-wait", str, "arriving (default): wait the delay only while more requests are being "
                          "decoded, so a lone request runs at once; full: always wait it"),
    ("--max-queue-size", int, "waiting requests per model before RESOURCE_EXHAUSTED (default 256)"),
    ("--threads", int, "onnxruntime intra-op threads per model (default min(4, CPUs))"),
    ("--grpc-workers", int, "gRPC handler threads (default max(8, 2 x max batch + 4))"),
    ("--max-message-mb", int, "largest gRPC message in MB (default 64)"),
    ("--max-image-pixels", int, "largest encoded image accepted, in pixels (default 50000000)"),
    ("--poll-seconds", float, "repository polling interval (default 5; 0: only on SIGHUP)"),
    ("--grace-seconds", float, "time in-flight requests get on SIGTERM (default 10)"),
    ("--tls-cert", str, "server certificate (PEM); enables TLS"),
    ("--tls-key", str, "server private key (PEM)"),
    ("--tls-client-ca", str, "require client certificates signed by this CA (mutual TLS)"),
)


def _add_tls_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="server address")
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
    for flag, kind, text in _SERVE_OPTIONS:
        serve.add_argument(flag, type=kind, default=None, help=text)
    serve.add_argument("--no-batching", action="store_const", const=True, default=None,
                       help="run every request on its own")
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

    check = subparsers.add_parser(
        "health", help="exit 0 only if the server's gRPC health check says SERVING")
    _add_tls_client_flags(check)
    check.set_defaults(timeout=5.0)
    check.add_argument("--service", default="", help="health service name (default: whole server)")
    check.set_defaults(handler="histoedge.serving.client:cli_health")
