"""Python client for the server, and the ``classify`` and ``health`` commands.

One server, several replicas or a DNS name that resolves to several (a Kubernetes headless
Service): with more than one possible backend the channel uses gRPC's own ``round_robin``
load balancing with client-side health checking (``grpc.health.v1``, so a draining replica
leaves the rotation as soon as it reports NOT_SERVING), and gRPC's retry policy sends a call
that failed with UNAVAILABLE again, to the next replica.

Example::

    with InferenceClient("localhost:8001") as client:
        for prediction in client.classify_paths(["slides/tile1.png"]):
            print(prediction.source, prediction.label, prediction.probability)

    InferenceClient(["10.0.0.5:8001", "10.0.0.6:8001"])     # two replicas
    InferenceClient("dns:///histoedge-headless.pathology.svc.cluster.local:8001")
"""

from __future__ import annotations

import collections
import json
import os
import socket
import sys
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from histoedge import HistoedgeError
from histoedge.export.manifest import IMAGE, IMAGE_BYTES, LABEL, PROBABILITIES
from histoedge.serving import codecs
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving._proto import monitoring_pb2, monitoring_pb2_grpc
from histoedge.serving.schema import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MAX_MESSAGE = 64 * 1024 * 1024
INFERENCE_SERVICE = "inference.GRPCInferenceService"

# Every inference call that fails with UNAVAILABLE (a replica restarting or draining) is sent
# again, up to 4 more times; with round_robin each attempt goes to the next ready replica.
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}


def service_config(balanced: bool) -> dict:
    """The channel's gRPC service config: retries always; round-robin over healthy replicas
    when the target may name several (a NOT_SERVING single server must still answer calls)."""
    config: dict = {"methodConfig": [{"name": [{"service": INFERENCE_SERVICE}], "retryPolicy": RETRY_POLICY}]}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": ""}
    return config


def channel_target(servers: str | Sequence[str]) -> tuple[str, bool]:
    """One gRPC target for one or several servers, and whether it may name several backends.

    Args:
        servers: ``host:port``; a gRPC target with a scheme (``dns:///name:port``,
            ``ipv4:a:p,b:p``, ``unix:path``); or several ``host:port`` (a sequence or a
            comma-separated string), which are resolved once here into an ``ipv4:``/``ipv6:``
            list (use a ``dns:///`` target to follow replicas as they come and go).

    Example::

        channel_target(["127.0.0.1:8001", "127.0.0.1:8011"])  # ("ipv4:127.0.0.1:8001,127.0.0.1:8011", True)
    """
    items = [servers] if isinstance(servers, str) else list(servers)
    items = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not items:
        raise HistoedgeError("no server address given")
    if len(items) == 1:
        target = items[0]
        return target, target.startswith(("dns:", "ipv4:", "ipv6:"))
    resolved: list[tuple[int, str, int]] = []
    for item in items:
        if "://" in item or item.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
            raise HistoedgeError(f"{item!r}: a target with a scheme stands alone; list plain HOST:PORT addresses")
        parts = urllib.parse.urlsplit("//" + item)
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or port is None:
            raise HistoedgeError(f"{item!r} is not HOST:PORT")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise HistoedgeError(f"cannot resolve {host!r}: {error.strerror}") from None
        families = {info[0] for info in infos}
        family = socket.AF_INET if socket.AF_INET in families else socket.AF_INET6
        resolved += [(family, ip, port) for ip in dict.fromkeys(i[4][0] for i in infos if i[0] == family)]
    families = {family for family, _, _ in resolved}
    if len(families) > 1:
        raise HistoedgeError("several servers must all be IPv4 or all IPv6")
    if families == {socket.AF_INET}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for _, ip, port in resolved), True
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for _, ip, port in resolved), True


@dataclass
class Prediction:
    """One classified image.  ``probability`` is P(positive class) for binary models, else P(label)."""

    source: str
    label: str | None = None
    probability: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None
    request_id: str | None = None  # with ``index``, what ``histoedge feedback`` takes
    index: int | None = None


def _read(path: Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or []) + [self.header]
        return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                         details.wait_for_ready, details.compression), request)


def _first_host(server: str | Sequence[str]) -> str | None:
    first = (server if isinstance(server, str) else ",".join(map(str, server))).split(",")[0].strip()
    try:
        return urllib.parse.urlsplit("//" + first).hostname
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


class InferenceClient:
    """A channel to one server or to several replicas (see :func:`channel_target`).

    Args:
        server: ``host:port``, a gRPC target such as ``dns:///name:port``, or several
            ``host:port`` (a list, or comma-separated); several backends are load-balanced
            round-robin and a call failing with UNAVAILABLE is retried on the next one.
        tls_ca: CA certificate (PEM file) that signed the server's certificate; enables TLS.
        tls_cert, tls_key: client certificate and key (PEM files) for mutual TLS.
        timeout: seconds allowed per call.
        token: bearer token sent as ``authorization`` metadata with every call (servers
            started with ``--auth-token-file``); the CLI reads ``HISTOEDGE_AUTH_TOKEN``.
    """

    def __init__(self, server: str | Sequence[str], tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                 timeout: float = 30.0, token: str | None = None) -> None:
        target, balanced = channel_target(server)
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE),
                   ("grpc.max_send_message_length", _MAX_MESSAGE),
                   ("grpc.enable_retries", 1),
                   ("grpc.service_config", json.dumps(service_config(balanced)))]
        if (tls_cert is None) != (tls_key is None):
            raise HistoedgeError("--tls-cert and --tls-key go together")
        if tls_ca is None and tls_cert is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            try:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read(tls_ca), private_key=_read(tls_key),
                    certificate_chain=_read(tls_cert))
            except OSError as error:
                raise HistoedgeError(f"cannot read TLS file: {error}") from error
            host = _first_host(server)
            if balanced and host and target.startswith(("ipv4:", "ipv6:")) and not _is_ip(host):
                # resolved host names: the certificate names the host, not the address
                options.append(("grpc.ssl_target_name_override", host))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        if token:
            self.channel = grpc.intercept_channel(self.channel, _BearerToken(token.strip()))
        self.server = server if isinstance(server, str) else ",".join(server)
        self.target = target
        self.timeout = timeout
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._monitoring = monitoring_pb2_grpc.MonitoringServiceStub(self.channel)
        self._metadata: dict[tuple[str, str], pb.ModelMetadataResponse] = {}
        self.last_id = ""

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # --- health and metadata ------------------------------------------------------

    def health(self, service: str = "") -> str:
        """The gRPC health status name, e.g. ``"SERVING"``."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def server_live(self) -> bool:
        return self.stub.ServerLive(pb.ServerLiveRequest(), timeout=self.timeout).live

    def server_ready(self) -> bool:
        return self.stub.ServerReady(pb.ServerReadyRequest(), timeout=self.timeout).ready

    def model_ready(self, model: str = "", version: str = "") -> bool:
        return self.stub.ModelReady(pb.ModelReadyRequest(name=model, version=version), timeout=self.timeout).ready

    def model_metadata(self, model: str = "", version: str = "") -> pb.ModelMetadataResponse:
        return self.stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), timeout=self.timeout)

    def feedback(self, request_id: str, label: str, index: int = 0) -> monitoring_pb2.FeedbackResponse:
        """Report the true ``label`` of image ``index`` of the earlier request ``request_id``."""
        return self._monitoring.Feedback(
            monitoring_pb2.FeedbackRequest(id=request_id, index=index, label=label), timeout=self.timeout)

    # --- inference ----------------------------------------------------------------

    def infer(self, inputs: Sequence[Tensor], model: str = "", version: str = "",
              outputs: Sequence[str] = (), request_id: str = "", abstain: bool | None = None
              ) -> tuple[dict[str, np.ndarray], str]:
        """Send tensors; return (outputs by name, version that answered).

        ``abstain`` sets the request parameter (None: the server's default); the id the
        server answered with (``request_id`` or one it made up) is in :attr:`last_id`.
        """
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
        if abstain is not None:
            request.parameters["abstain"].bool_param = abstain
        for tensor in inputs:
            message, raw = codecs.encode_input(tensor)
            request.inputs.append(message)
            request.raw_input_contents.append(raw)
        for name in outputs:
            request.outputs.add(name=name)
        response = self.stub.ModelInfer(request, timeout=self.timeout)
        self.last_id = response.id
        tensors = [codecs.decode_output(message, raw)
                   for message, raw in zip(response.outputs, response.raw_output_contents)]
        return {tensor.name: tensor.data for tensor in tensors}, response.model_version

    def classify_arrays(self, images: np.ndarray, model: str = "", version: str = "") -> list[Prediction]:
        """Classify uint8 [N, H, W, 3] RGB images already at the model's size."""
        tensor = Tensor(IMAGE, "UINT8", np.ascontiguousarray(images, dtype=np.uint8))
        return self._predictions(tensor, [str(i) for i in range(len(images))], model, version)

    def classify_bytes(self, encoded: Sequence[bytes], model: str = "", version: str = "",
                       sources: Sequence[str] | None = None) -> list[Prediction]:
        """Classify encoded PNG/JPEG/TIFF images; the server decodes and resizes them."""
        data = np.empty(len(encoded), dtype=object)
        data[:] = [bytes(item) for item in encoded]
        names = list(sources) if sources is not None else [str(i) for i in range(len(encoded))]
        return self._predictions(Tensor(IMAGE_BYTES, "BYTES", data), names, model, version)

    def _predictions(self, tensor: Tensor, sources: list[str], model: str, version: str) -> list[Prediction]:
        parameters = self._model_parameters(model, version)  # before: a draining server takes no new calls
        outputs, _ = self.infer([tensor], model, version, outputs=(PROBABILITIES, LABEL))
        positive = parameters.get("positive_class")
        result = []
        for index, (source, label, row) in enumerate(zip(sources, outputs[LABEL], outputs[PROBABILITIES])):
            label = label.decode("utf-8")
            if positive is not None:
                probability = float(row[positive])
            else:
                probability = float(np.max(row))
            result.append(Prediction(source, label, probability, [float(p) for p in row],
                                     request_id=self.last_id or None, index=index))
        return result

    def _model_parameters(self, model: str, version: str) -> dict:
        key = (model, version)
        if key not in self._metadata:
            self._metadata[key] = self.model_metadata(model, version)
        params = self._metadata[key].parameters
        return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in params.items()}

    def classify_paths(self, paths: Iterable[str | Path], model: str = "", version: str = "",
                       batch_size: int = 16) -> list[Prediction]:
        """Classify files and folders (searched recursively for image files).

        Files that cannot be read or decoded get a Prediction with ``error`` set.
        """
        files = expand_paths(paths)
        if files:
            self._model_parameters(model, version)  # an unknown model fails once, not per file
        results: list[Prediction] = []
        for start in range(0, len(files), max(1, batch_size)):
            chunk = files[start:start + batch_size]
            readable, data = [], []
            for path in chunk:
                try:
                    data.append(path.read_bytes())
                    readable.append(path)
                except OSError as error:
                    results.append(Prediction(str(path), error=f"cannot read file: {error.strerror or error}"))
            if readable:
                results.extend(self._classify_files(readable, data, model, version))
        return results

    def _classify_files(self, files: list[Path], data: list[bytes], model: str, version: str) -> list[Prediction]:
        try:
            return self.classify_bytes(data, model, version, sources=[str(p) for p in files])
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            if len(files) == 1:
                return [Prediction(str(files[0]), error=error.details())]
        # One bad image fails its whole request: find it by sending each alone.
        results = []
        for path, item in zip(files, data):
            results.extend(self._classify_files([path], [item], model, version))
        return results


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and image files found recursively in folders (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def _rpc_failure(error: grpc.RpcError, server: str) -> HistoedgeError:
    return HistoedgeError(f"{server}: {error.code().name}: {error.details()}")


def _servers_text(server: str | Sequence[str]) -> str:
    return server if isinstance(server, str) else ",".join(server)


def cli_classify(args) -> int:
    """``histoedge classify``: exit 0 if every image was classified, 1 if some could not be."""
    try:
        with InferenceClient(args.server, args.tls_ca, args.tls_cert, args.tls_key, args.timeout,
                             token=os.environ.get("HISTOEDGE_AUTH_TOKEN")) as client:
            predictions = client.classify_paths(args.paths, args.model or "", args.model_version,
                                                args.batch_size)
    except grpc.RpcError as error:
        raise _rpc_failure(error, _servers_text(args.server)) from None
    if args.json:
        for prediction in predictions:
            print(json.dumps(asdict(prediction)))
    else:
        width = max([len("path")] + [len(p.source) for p in predictions])
        print(f"{'path':<{width}}  {'label':<16}  probability")
        for p in predictions:
            if p.error:
                print(f"{p.source:<{width}}  {'ERROR':<16}  {p.error}")
            else:
                print(f"{p.source:<{width}}  {p.label:<16}  {p.probability:.4f}")
    failed = sum(1 for p in predictions if p.error)
    if failed:
        print(f"histoedge classify: {failed} of {len(predictions)} images could not be classified",
              file=sys.stderr)
    return 1 if failed else 0


def cli_feedback(args) -> int:
    """``histoedge feedback``: report the true label of an earlier request's image."""
    if args.index < 0:
        raise HistoedgeError("--index must not be negative")
    try:
        with InferenceClient(args.server, args.tls_ca, args.tls_cert, args.tls_key, args.timeout) as client:
            result = client.feedback(args.id, args.label, args.index)
    except grpc.RpcError as error:
        raise _rpc_failure(error, args.server) from None
    print(f"{args.id}[{args.index}]: {result.model_name}/{result.model_version} predicted "
          f"{result.predicted_label}, true {args.label} ({'correct' if result.correct else 'wrong'}); "
          f"{result.labels} labelled outcomes in the window")
    return 0


def cli_health(args) -> int:
    """``histoedge health``: exit 0 only when the server reports SERVING."""
    try:
        with InferenceClient(args.server, args.tls_ca, args.tls_cert, args.tls_key, args.timeout,
                             token=os.environ.get("HISTOEDGE_AUTH_TOKEN")) as client:
            status = client.health(args.service)
    except grpc.RpcError as error:
        print(f"histoedge health: {_servers_text(args.server)}: {error.code().name}: {error.details()}",
              file=sys.stderr)
        return 1
    print(f"{_servers_text(args.server)}: {status}")
    return 0 if status == "SERVING" else 1
