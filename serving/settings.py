"""Server settings: one typed object, filled from flags, then environment, then defaults.

Every option ``--some-option`` can also be given as ``HISTOEDGE_SOME_OPTION``;
a flag on the command line wins over the environment.

Example::

    settings = ServerSettings.from_sources({"repo": "models", "port": None}, os.environ)
    settings.port  # 8001, or $HISTOEDGE_PORT
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from histoedge import HistoedgeError

ENV_PREFIX = "HISTOEDGE_"
DEVICES = ("auto", "cpu", "cuda", "tensorrt")


def bool_option(text: str) -> bool:
    """Parse an on/off value from a flag or the environment."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _option(default: Any, convert: Callable[[str], Any], help: str, default_text: str | None = None,
            secret: bool = False) -> Any:
    """A settings field; ``help`` and ``default_text`` become the generated flag's help.

    A ``secret`` field is left out of the settings' repr (and so out of logs).
    """
    return field(default=default, repr=not secret,
                 metadata={"convert": convert, "help": help, "default_text": default_text})


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class ServerSettings:
    """Options of ``histoedge serve`` (see ``histoedge serve --help``)."""

    repo: Path | None = _option(None, Path, "model repository MODELS/<name>/<version>/", "none: required")
    host: str = _option("0.0.0.0", str, "address to listen on")
    port: int = _option(8001, int, "gRPC port (0 picks a free port)")
    metrics_port: int = _option(8002, int, "Prometheus metrics HTTP port (0 disables)")
    http_port: int = _option(8000, int, "Open Inference Protocol REST, image upload and status page port "
                                        "(0 disables)")
    metrics_host: str = _option("127.0.0.1", str, "address the metrics port listens on; 0.0.0.0 exposes it "
                                                  "to the network (see SECURITY.md)")
    metrics_tls: bool = _option(False, bool_option, "serve metrics over HTTPS with --tls-cert/--tls-key "
                                                    "(and require client certificates with --tls-client-ca)")
    device: str = _option("auto", str, "execution providers: auto (TensorRT, CUDA, CPU as available)|cpu|cuda|tensorrt")
    max_batch_size: int = _option(16, int, "largest merged batch (1 disables batching)")
    max_queue_delay_ms: float = _option(2.0, float, "longest wait for a batch to fill")
    max_queue_size: int = _option(256, int, "requests waiting per model version before RESOURCE_EXHAUSTED")
    no_batching: bool = _option(False, bool_option, "run each request on its own")
    batch_wait: str = _option("arriving", str, "arriving: wait the queue delay only while more requests are "
                                                   "being decoded, so a lone request runs at once; full: always wait")
    threads: int | None = _option(None, int, "onnxruntime intra-op threads per session", "min(4, CPUs)")
    grpc_workers: int = _option(0, int, "gRPC handler threads; 0: max(8, 2 x max batch + 4)")
    max_message_mb: int = _option(64, int, "largest gRPC message or HTTP request body in MB")
    max_image_pixels: int = _option(2048 * 2048, int, "largest encoded image accepted, in pixels",
                                    "4194304 = 2048x2048")
    max_request_images: int = _option(64, int, "most images (rows) in one request")
    decode_memory_mb: int = _option(256, int, "memory all image decodes in flight may use together, in MB")
    poll_seconds: float = _option(5.0, float, "repository polling interval (0: only on SIGHUP)")
    grace_seconds: float = _option(10.0, float, "time for in-flight requests on SIGTERM")
    tls_cert: Path | None = _option(None, Path, "server certificate (PEM); enables TLS", "none")
    tls_key: Path | None = _option(None, Path, "server private key (PEM) for TLS", "none")
    tls_client_ca: Path | None = _option(None, Path, "require client certificates signed by this CA (PEM; mutual TLS)",
                                         "none")
    no_monitoring: bool = _option(False, bool_option, "skip input quality, drift, abstention and feedback")
    abstain: bool = _option(False, bool_option, "answer 'indeterminate' for images failing a quality check or "
                                                "inside the uncertainty band unless a request sets abstain")
    drift_window_images: int = _option(500, int, "images in the count-based drift window per model version")
    drift_window_seconds: float = _option(900.0, float, "seconds covered by the time-based drift window")
    feedback_window: int = _option(1000, int, "labelled outcomes kept per model version for sensitivity etc.")
    prediction_memory: int = _option(10000, int, "recent predicted images remembered for feedback by request id")
    auth_token_file: Path | None = _option(None, Path, "require 'authorization: Bearer TOKEN' metadata; "
                                                       "the file holds one or more tokens, one a line", "none")
    auth_token: str | None = _option(None, str, "the token itself (prefer the environment variable or the "
                                                "file: a flag shows in the process list)", "none", secret=True)
    auth_health: bool = _option(False, bool_option, "also require the token for health checks "
                                                    "(default: probes stay open)")
    no_reflection: bool = _option(False, bool_option, "turn gRPC server reflection off")
    trusted_keys: Path | None = _option(None, Path, "serve only versions signed by a public key (*.pub) in "
                                                    "this folder; refuse and log the others", "none")

    def __post_init__(self) -> None:
        if self.threads is None:
            object.__setattr__(self, "threads", _default_threads())
        self.validate()

    @property
    def batch_limit(self) -> int:
        """The largest batch the batcher builds (1 when batching is off)."""
        return 1 if self.no_batching else self.max_batch_size

    @property
    def workers(self) -> int:
        # Each waiting request holds a handler thread, so a full batch needs that many.
        return self.grpc_workers or max(8, 2 * self.batch_limit + 4)

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise HistoedgeError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.batch_wait not in ("arriving", "full"):
            raise HistoedgeError(f"--batch-wait must be arriving or full, not {self.batch_wait!r}")
        for name in ("max_batch_size", "max_queue_size", "threads", "max_message_mb", "max_image_pixels",
                     "drift_window_images", "feedback_window", "prediction_memory", "max_request_images",
                     "decode_memory_mb"):
            if getattr(self, name) < 1:
                raise HistoedgeError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("port", "metrics_port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise HistoedgeError(f"--{name.replace('_', '-')} must be a port number from 0 to 65535")
        for name in ("max_queue_delay_ms", "poll_seconds", "grace_seconds"):
            if getattr(self, name) < 0:
                raise HistoedgeError(f"--{name.replace('_', '-')} must not be negative")
        if not self.drift_window_seconds > 0:
            raise HistoedgeError("--drift-window-seconds must be positive")
        if self.abstain and self.no_monitoring:
            raise HistoedgeError("--abstain needs monitoring; drop --no-monitoring")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise HistoedgeError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise HistoedgeError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.metrics_tls and self.tls_cert is None:
            raise HistoedgeError("--metrics-tls needs --tls-cert and --tls-key")
        if self.auth_token is not None and self.auth_token_file is not None:
            raise HistoedgeError("give the token once: --auth-token-file or --auth-token, not both")
        if self.auth_health and self.auth_token is None and self.auth_token_file is None:
            raise HistoedgeError("--auth-health needs --auth-token-file or --auth-token")

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @staticmethod
    def env_name(option: dataclasses.Field) -> str:
        return ENV_PREFIX + option.name.upper()

    @staticmethod
    def default_text(option: dataclasses.Field) -> str:
        if option.metadata["default_text"] is not None:
            return option.metadata["default_text"]
        return "off" if option.default is False else str(option.default)

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
                     ) -> "ServerSettings":
        """Build settings: a non-None ``flags[name]`` wins, then ``HISTOEDGE_<NAME>``, then the default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for option in cls.options():
            flag = flags.get(option.name)
            env_name = cls.env_name(option)
            convert = option.metadata["convert"]
            if flag is not None:
                try:
                    values[option.name] = convert(flag) if isinstance(flag, str) else flag
                except ValueError as error:
                    raise HistoedgeError(f"--{option.name.replace('_', '-')}: {error}") from None
            elif env_name in environ:
                try:
                    values[option.name] = convert(environ[env_name])
                except ValueError as error:
                    raise HistoedgeError(f"{env_name}: {error}") from None
        return cls(**values)
