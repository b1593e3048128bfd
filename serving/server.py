"""The inference server: OIP over gRPC and REST, health, reflection, metrics, repository watching.

Design: a synchronous ``grpc.server`` with a sized thread pool.  Handler threads
only convert messages, decode images (Pillow) and wait on their batch; the
batcher thread of each model version calls onnxruntime, which releases the
GIL.  The pool is sized so a full batch of waiting requests fits
(``ServerSettings.workers``).  The REST transport and the status page
(``serving.rest``, uvicorn in a thread of this process) call the same data plane.

Example::

    server = InferenceServer(ServerSettings(repo=Path("models"), port=0)).start()
    print(server.port)
    server.stop()
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from concurrent import futures
from functools import partial
from pathlib import Path

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from histoedge import HistoedgeError
from histoedge.export.errors import ManifestError, SignatureError
from histoedge.export.manifest import Manifest
from histoedge.serving._proto import inference_pb2, inference_pb2_grpc, monitoring_pb2, monitoring_pb2_grpc
from histoedge.serving.auth import TokenAuth
from histoedge.serving.dataplane import DataPlane
from histoedge.serving.drain import Drain
from histoedge.serving.grpc_auth import TokenInterceptor
from histoedge.serving.images import DecodeBudget
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.monitoring.monitor import Monitoring
from histoedge.serving.monitoring.service import SERVICE_NAME as MONITORING_SERVICE
from histoedge.serving.monitoring.service import MonitoringServicer
from histoedge.serving.repository import ModelRegistry, ModelRepository
from histoedge.serving.rest import RestServer
from histoedge.serving.runtime import ModelLoadError, ModelVersion, RunHook, select_providers
from histoedge.serving.servicer import InferenceServicer, add_to_server
from histoedge.serving.settings import ServerSettings
from histoedge.serving.status import StatusReport

log = logging.getLogger(__name__)

INFERENCE_SERVICE = "inference.GRPCInferenceService"
_RESPONSE_FLUSH_SECONDS = 0.2


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    # The OIP messages live in a private pool (see proto/generate.py), so reflection
    # gets its own pool holding every service this server offers.
    pool = descriptor_pool.DescriptorPool()
    for module in (inference_pb2, monitoring_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class InferenceServer:
    """Everything ``histoedge serve`` runs, startable and stoppable in-process.

    Args:
        settings: server options.
        registry: Prometheus registry for the metrics (a new one by default).
        run_hook: wraps each model's session run (tests use it to slow or count runs).
    """

    def __init__(self, settings: ServerSettings, registry: CollectorRegistry | None = None,
                 run_hook: RunHook | None = None) -> None:
        if settings.repo is None:
            raise HistoedgeError("--repo is required (or HISTOEDGE_REPO)")
        if not Path(settings.repo).is_dir():
            raise HistoedgeError(f"model repository {settings.repo} is not a folder")
        try:
            log.info("execution providers for --device %s: %s", settings.device,
                     ", ".join(select_providers(settings.device)))
        except ModelLoadError as error:
            raise HistoedgeError(str(error)) from None
        self.settings = settings
        self.metrics = ServerMetrics(registry if registry is not None else CollectorRegistry())
        self.monitoring = None if settings.no_monitoring else Monitoring(settings, self.metrics.registry)
        self.auth = TokenAuth.from_settings(settings)
        self.trusted_keys = None
        if settings.trusted_keys is not None:
            from histoedge.export import signing  # noqa: PLC0415 - needs cryptography, only when asked
            self.trusted_keys = signing.load_trusted_keys(settings.trusted_keys)
            log.info("serving only versions signed by %d trusted key(s): %s", len(self.trusted_keys),
                     ", ".join(self.trusted_keys))
        self._load = partial(ModelVersion.load, settings=settings, metrics=self.metrics, run_hook=run_hook,
                             monitoring=self.monitoring,
                             decode_budget=DecodeBudget(settings.decode_memory_mb * 1024 * 1024))
        self.models = ModelRegistry(ModelRepository(Path(settings.repo)), self._load_version,
                                    self._update_health)
        self.dataplane = DataPlane(self.models, self.metrics)
        self.drain = Drain()
        self.health = health.HealthServicer()
        self._grpc: grpc.Server | None = None
        self._metrics_http = None
        self._rest: RestServer | None = None
        self._served: set[tuple[str, int]] = set()
        self.port = 0
        self.http_port = 0

    def start(self) -> "InferenceServer":
        """Listen, then load every model (health says NOT_SERVING until they are warm)."""
        settings = self.settings
        size = settings.max_message_mb * 1024 * 1024
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="grpc"),
            interceptors=[TokenInterceptor(self.auth)] if self.auth is not None else None,
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=settings.workers + settings.max_queue_size)
        add_to_server(inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                      InferenceServicer(self.dataplane, self.drain), self._grpc)
        services = [INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        if self.monitoring is not None:
            add_to_server(monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server,
                          MonitoringServicer(self.monitoring), self._grpc)
            services.append(MONITORING_SERVICE)
        add_to_server(health_pb2_grpc.add_HealthServicer_to_server, self.health, self._grpc)
        if not settings.no_reflection:
            reflection.enable_server_reflection(services, self._grpc, pool=_reflection_pool())
        self._update_health()
        address = f"{settings.host}:{settings.port}"
        self.port = self._bind(address)
        if settings.metrics_port:
            try:
                self._metrics_http = self.metrics.serve_http(
                    settings.metrics_host, settings.metrics_port, tls=self._metrics_tls(), auth=self.auth)
            except (OSError, ssl.SSLError) as error:
                raise HistoedgeError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                                     f"{error}") from None
        if settings.http_port:
            status = StatusReport(self.dataplane, self.metrics, ports={
                "grpc": self.port, "rest": settings.http_port, "metrics": settings.metrics_port})
            self._rest = RestServer(self.dataplane, self.metrics, settings, status, self.auth).start()
            self.http_port = self._rest.port
        self._grpc.start()
        log.info("listening on %s:%d for gRPC and on port %s for REST (%s%s%s); metrics on %s", settings.host,
                 self.port, self.http_port or "off",
                 "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
                 ", bearer token" if self.auth else "", "" if settings.no_reflection else ", reflection",
                 f"{'https' if settings.metrics_tls else 'http'}://{settings.metrics_host}:{settings.metrics_port}"
                 if settings.metrics_port else "off")
        self.models.refresh()
        self.models.start_watching(settings.poll_seconds)
        if not self.models.all_ready():
            log.warning("not every model in %s loaded; health reports NOT_SERVING", settings.repo)
        return self

    def _bind(self, address: str) -> int:
        settings = self.settings
        try:
            if settings.tls_cert is None:
                port = self._grpc.add_insecure_port(address)
            else:
                client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
                    root_certificates=client_ca, require_client_auth=client_ca is not None)
                port = self._grpc.add_secure_port(address, credentials)
        except OSError as error:
            raise HistoedgeError(f"cannot read TLS files: {error}") from error
        except RuntimeError as error:
            raise HistoedgeError(f"cannot listen on {address}: {error}") from error
        if port == 0:
            raise HistoedgeError(f"cannot listen on {address} (in use?)")
        return port

    def _metrics_tls(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.metrics_tls:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:  # the same client certificates as gRPC
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _load_version(self, path: Path) -> ModelVersion:
        """Load one version (checking its signature with --trusted-keys); forget its metrics on failure."""
        try:
            if self.trusted_keys is None:
                return self._load(path)
            return self._load_signed(path)
        except ModelLoadError:
            self.metrics.forget(path.parent.name, path.name)
            raise

    def _load_signed(self, path: Path) -> ModelVersion:
        from histoedge.export import signing  # noqa: PLC0415
        try:
            verified = signing.verify_signature(path, self.trusted_keys)
            signed = Manifest.from_dict(json.loads(verified.manifest_bytes))
        except (SignatureError, ManifestError, ValueError) as error:
            raise ModelLoadError(f"refused: {error}") from None
        model = self._load(path)
        # The files could change between the check and the load: serve only what was signed.
        if model.manifest != signed:
            model.close()
            raise ModelLoadError(f"refused: {path} changed while it was being loaded")
        log.info("model %s version %s is signed by trusted key %s", model.name, model.version, verified.key_id)
        return model

    def _update_health(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        overall = serving if self.models.all_ready() else not_serving
        for service in ("", INFERENCE_SERVICE):
            self.health.set(service, overall)
        for name in self.models.names():
            self.health.set(name, serving if self.models.ready(name) else not_serving)
        served = {(name, version) for name in self.models.names() for version in self.models.versions(name)}
        for name, version in self._served - served:  # unloaded: its series go too
            self.metrics.forget(name, version)
        for name, version in served:
            self.metrics.model_ready.labels(model=name, version=str(version)).set(1)
        self._served = served
        if self.monitoring is not None:
            self.monitoring.retain(served)

    def reload(self) -> None:
        """Rescan the repository soon (what SIGHUP does)."""
        self.models.rescan_soon()

    def stop(self, grace: float | None = None, exiting: bool = False) -> None:
        """Refuse new calls, let in-flight ones finish within ``grace`` seconds, unload models.

        Inference calls are refused with UNAVAILABLE (retryable) while the ones inside
        finish; gRPC's own stop comes after, as it cancels (CANCELLED) every call that
        reached the transport but no handler yet.  ``exiting``: the process ends right
        after, so gRPC's stop is skipped and such calls see the connection close
        (UNAVAILABLE) instead.
        """
        grace = self.settings.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        if self._rest is not None:
            self._rest.begin_stop()  # both transports drain at the same time
        if self._grpc is not None:
            if not self.drain.close(grace):
                log.warning("%d request(s) still running after %.1f s; cancelling them",
                            self.drain.active, grace)
            if exiting:
                time.sleep(_RESPONSE_FLUSH_SECONDS)  # answers already returned reach the socket
            else:
                remaining = max(0.0, deadline - time.monotonic())
                self._grpc.stop(remaining).wait(remaining + 1)
        if self._rest is not None:
            self._rest.stop(max(0.0, deadline - time.monotonic()))
        self.models.close()
        if self.monitoring is not None:
            self.monitoring.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        log.info("server stopped")


def cli_serve(args) -> int:
    """``histoedge serve``: run until SIGTERM or SIGINT, then drain and exit 0."""
    flags = {option.name: getattr(args, option.name, None) for option in ServerSettings.options()}
    server = InferenceServer(ServerSettings.from_sources(flags))
    stopping = threading.Event()
    # Handlers first, so a SIGTERM while models load still drains and exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.set())
    signal.signal(signal.SIGHUP, lambda signum, frame: server.reload())
    server.start()
    while not stopping.wait(1.0):
        pass
    log.info("stopping: draining in-flight requests for up to %.1f s", server.settings.grace_seconds)
    code = 0
    try:
        server.stop(exiting=True)
    except Exception:  # noqa: BLE001 - the process must end either way
        log.exception("error while stopping")
        code = 1
    finally:
        # Every request was answered or refused; ending the process here (not through gRPC's
        # stop, nor the interpreter's teardown of the gRPC server, which cancels calls and can
        # wait on handler threads) lets calls still on their way see the connection close:
        # UNAVAILABLE, never CANCELLED.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
