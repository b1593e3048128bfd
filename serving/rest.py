"""Open Inference Protocol over HTTP/REST, an image upload and the status page (Starlette on uvicorn).

The handlers only convert: HTTP bodies become the internal types of ``serving.schema``
and go to :meth:`DataPlane.infer`, the method the gRPC servicer calls, so REST and gRPC
requests share one batcher per model version (and can share a batch).  Errors become
HTTP status codes in one table, :data:`HTTP_STATUS` (the gRPC one is
``serving.servicer.STATUS_CODES``), with a JSON body ``{"error": ..., "outcome": ...}``.

Routes (``{v}``: optional ``/versions/<v>`` after the model name):

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{name}{v}``,
  ``/v2/models/{name}{v}/ready``
- ``POST /v2/models/{name}{v}/infer``: JSON tensors, or JSON plus binary tensor data
  (``Inference-Header-Content-Length``), as ``tritonclient.http`` sends them
- ``POST /v2/models/{name}{v}/classify``: ``multipart/form-data`` image files
  (``curl -F image=@tile.png``), answered with a label and probabilities per file
- ``GET /``: the status page; ``GET /status``: its data as JSON

Threads: uvicorn runs one event loop in its own thread; a request's body is read
there, then decoding, inference and encoding run in a pool of ``settings.workers``
threads (the size of gRPC's pool), as a gRPC handler would.

Example::

    rest = RestServer(plane, metrics, settings).start()   # listens on settings.http_port
    rest.stop(grace=10)
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import hashlib
import importlib.resources
import logging
import re
import socket
import ssl
import threading
import time

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from histoedge import HistoedgeError
from histoedge.export.manifest import IMAGE_BYTES, LABEL, PROBABILITIES
from histoedge.serving import rest_codecs
from histoedge.serving.auth import TokenAuth, asgi_token_required
from histoedge.serving.dataplane import DataPlane
from histoedge.serving.errors import (CancelledError, DeadlineExceededError, InvalidInputError,
                                      ModelNotFoundError, ModelNotReadyError, QueueFullError,
                                      ServerClosingError, ServingError)
from histoedge.serving.metrics import ServerMetrics
from histoedge.serving.schema import CancelToken, InferenceRequest, Tensor
from histoedge.serving.settings import ServerSettings
from histoedge.serving.untrusted import client_text
from histoedge.serving.status import StatusReport

log = logging.getLogger(__name__)

HTTP_STATUS: dict[type[ServingError], int] = {
    InvalidInputError: 400,
    ModelNotFoundError: 404,
    ModelNotReadyError: 503,
    QueueFullError: 429,
    DeadlineExceededError: 504,
    CancelledError: 499,  # the client closed the connection (nginx's code; nobody reads it)
    ServerClosingError: 503,
}
RETRY_AFTER_S = {429: "1", 503: "5"}
HEADER_LENGTH = "Inference-Header-Content-Length"
REST_EXTENSIONS = ("binary_tensor_data", "classify_upload")
MAX_UPLOAD_FILES = 256
PAGE_FILE = "status_page.html"


def http_status(error: ServingError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def clean(text: str, limit: int = 200) -> str:
    """A client-supplied string made safe for messages and logs (the server's one rule, escaped and cut)."""
    return client_text(text, limit)


def error_response(status: int, message: str, outcome: str) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S[status]} if status in RETRY_AFTER_S else None
    return JSONResponse({"error": message, "outcome": outcome}, status_code=status, headers=headers)


def _endpoint(handler):
    """Turn ServingErrors into their HTTP status, HTTPExceptions into JSON, anything else into 500."""
    @functools.wraps(handler)
    async def wrapper(self: "RestApp", request: Request) -> Response:
        try:
            return await handler(self, request)
        except ServingError as error:
            status = http_status(error)
            log.warning("%s %s: %d: %s", request.method, clean(request.url.path), status,
                        clean(getattr(error, "log_text", str(error)), 500))
            return error_response(status, str(error), error.outcome)
        except HTTPException as error:
            log.warning("%s %s: %d: %s", request.method, clean(request.url.path), error.status_code, error.detail)
            return error_response(error.status_code, str(error.detail), "invalid_request")
        except Exception as error:  # noqa: BLE001 - a request must never take the server down
            log.error("%s %s: 500: %s: %s", request.method, clean(request.url.path), type(error).__name__, error)
            return error_response(500, f"internal error: {type(error).__name__}: {error}", "internal")
    return wrapper


async def _cancel_on_disconnect(receive, token: CancelToken) -> None:
    """Cancel the request when the client goes away (the body has been read already)."""
    for _ in range(100):  # bounded: a server that keeps answering with empty messages is not waited on
        message = await receive()
        if message["type"] == "http.disconnect":
            token.cancel()
            return


class _InMemoryMultiPartParser(MultiPartParser):
    """Keeps uploaded files in memory: the body size is already bounded, and /tmp may be read-only."""

    spool_max_size = 2 ** 62


class RestApp:
    """The Starlette application on top of a :class:`DataPlane`.

    Args:
        dataplane: what every request calls.
        metrics: the server's metrics (read by the status page).
        settings: body size limit, pool size, queue size.
        status: the status page's data (built from ``dataplane`` and ``metrics`` if not given).
    """

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics, settings: ServerSettings,
                 status: StatusReport | None = None, auth: TokenAuth | None = None) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.status = status or StatusReport(dataplane, metrics)
        self.max_body = settings.max_message_mb * 1024 * 1024
        self.executor = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="http")
        self.max_in_flight = settings.workers + settings.max_queue_size  # as gRPC's maximum_concurrent_rpcs
        self._in_flight = 0
        self.page, self._csp = _load_page()
        routes = [Route("/", self.page_handler, methods=["GET"]),
                  Route("/status", self.status_handler, methods=["GET"]),
                  Route("/v2", self.server_metadata, methods=["GET"]),
                  Route("/v2/health/live", self.live, methods=["GET"]),
                  Route("/v2/health/ready", self.ready, methods=["GET"])]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [Route(prefix, self.model_metadata, methods=["GET"]),
                       Route(prefix + "/ready", self.model_ready, methods=["GET"]),
                       Route(prefix + "/infer", self.infer, methods=["POST"]),
                       Route(prefix + "/classify", self.classify, methods=["POST"])]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})
        if auth is not None:  # --auth-token-file: the same tokens as gRPC, health paths exempt
            self.app = asgi_token_required(self.app, auth)

    async def _http_error(self, request: Request, error: HTTPException) -> Response:
        """Unknown routes and methods answer in the same JSON shape as every other error."""
        response = error_response(error.status_code, f"{error.detail}: {request.method} "
                                  f"{clean(request.url.path)}", "invalid_request")
        if error.headers:
            response.headers.update(error.headers)
        return response

    # --- plumbing ------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        """The whole body, refused with 413 once it passes ``--max-message-mb``."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                raise HTTPException(400, "Content-Length is not a number")
            if int(declared) > self.max_body:
                raise HTTPException(413, f"the request body of {declared} bytes is over the limit of "
                                         f"{self.max_body} bytes (--max-message-mb)")
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise HTTPException(415, f"Content-Encoding {clean(encoding, 40)!r} is not supported; "
                                     f"send the body uncompressed")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise HTTPException(413, f"the request body is over the limit of {self.max_body} bytes "
                                         f"(--max-message-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _offload(self, request: Request, work, token: CancelToken):
        """Run blocking ``work`` (decode, infer, encode) in the pool; cancel it if the client leaves."""
        if self._in_flight >= self.max_in_flight:
            raise QueueFullError(f"the server has {self._in_flight} HTTP requests in flight, its limit; "
                                 f"retry later")
        self._in_flight += 1
        watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, token))
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, work)
        finally:
            watcher.cancel()
            self._in_flight -= 1

    @staticmethod
    def _model(request: Request) -> tuple[str, str]:
        return request.path_params["name"], request.path_params.get("version", "")

    # --- health and metadata ---------------------------------------------------------

    @_endpoint
    async def live(self, request: Request) -> Response:
        live = self.dataplane.live()
        return JSONResponse({"live": live}, status_code=200 if live else 400)

    @_endpoint
    async def ready(self, request: Request) -> Response:
        # The protocol answers health with 200 for true and a 4xx code for false.
        ready = self.dataplane.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    @_endpoint
    async def model_ready(self, request: Request) -> Response:
        ready = self.dataplane.model_ready(*self._model(request))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 400)

    @_endpoint
    async def server_metadata(self, request: Request) -> Response:
        metadata = self.dataplane.server_metadata()
        metadata["extensions"] = list(metadata["extensions"]) + list(REST_EXTENSIONS)
        return JSONResponse(metadata)

    @_endpoint
    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(rest_codecs.metadata_to_json(self.dataplane.model_metadata(*self._model(request))))

    # --- inference -----------------------------------------------------------------

    @_endpoint
    async def infer(self, request: Request) -> Response:
        name, version = self._model(request)
        declared = request.headers.get(HEADER_LENGTH)
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            raise InvalidInputError(f"{HEADER_LENGTH} is not a number")
        body = await self._body(request)
        token = CancelToken()

        def work() -> Response:
            decoded = rest_codecs.request_from_body(
                body, None if declared is None else int(declared), name, version)
            decoded.request.cancel = token
            response = self.dataplane.infer(decoded.request)
            header, binary = rest_codecs.response_to_body(response, decoded.binary_all, decoded.binary_outputs)
            if not binary:
                return Response(header, media_type="application/json")
            return Response(header + binary, media_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(len(header))})

        return await self._offload(request, work, token)

    @_endpoint
    async def classify(self, request: Request) -> Response:
        name, version = self._model(request)
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPException(415, "send the images as multipart/form-data, e.g. curl -F image=@tile.png")
        deadline = _timeout_ms(request.query_params.get("timeout_ms"))
        body = await self._body(request)
        files = await self._files(request.headers, body)
        token = CancelToken()

        def work() -> Response:
            items = np.empty(len(files), dtype=object)
            items[:] = [data for _, data in files]
            internal = InferenceRequest(
                model_name=name, model_version=version, inputs=[Tensor(IMAGE_BYTES, "BYTES", items)],
                outputs=[PROBABILITIES, LABEL], deadline=deadline, cancel=token, protocol="rest")
            try:
                response = self.dataplane.infer(internal)
            except InvalidInputError as error:
                named = InvalidInputError(_name_files(str(error), [n for n, _ in files]))
                named.log_text = str(error)  # the log keeps the index: logs never hold client file names
                raise named from None
            outputs = {tensor.name: tensor.data for tensor in response.outputs}
            metadata = self.dataplane.model_metadata(response.model_name, response.model_version)
            classes = str(metadata.parameters.get("classes", "")).split(",")
            results = [{"file": file_name, "label": bytes(label).decode("utf-8", "replace"),
                        PROBABILITIES: {c: float(p) for c, p in zip(classes, row)}}
                       for (file_name, _), label, row in zip(files, outputs[LABEL], outputs[PROBABILITIES])]
            return JSONResponse({"model_name": response.model_name, "model_version": response.model_version,
                                 "results": results})

        return await self._offload(request, work, token)

    async def _files(self, headers: Headers, body: bytes) -> list[tuple[str, bytes]]:
        async def stream():
            yield body

        parser = _InMemoryMultiPartParser(headers, stream(), max_files=MAX_UPLOAD_FILES, max_fields=64)
        try:
            form = await parser.parse()
        except MultiPartException as error:
            raise InvalidInputError(f"cannot read the multipart form: {error.message}") from None
        try:
            files = []
            for field, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.append((clean(value.filename or field, 120), await value.read()))
        finally:
            await form.close()
        if not files:
            raise InvalidInputError("the form holds no image file; send one or more, e.g. -F image=@tile.png")
        return files

    # --- status page -----------------------------------------------------------------

    async def page_handler(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers={"Content-Security-Policy": self._csp,
                                                "Cache-Control": "no-store"})

    @_endpoint
    async def status_handler(self, request: Request) -> Response:
        return JSONResponse(self.status.collect(), headers={"Cache-Control": "no-store"})


def _timeout_ms(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value:
        raise InvalidInputError("timeout_ms must be a positive number of milliseconds")
    return time.monotonic() + value / 1000.0


def _name_files(message: str, names: list[str]) -> str:
    """``image_bytes[2]: ...`` from the decoder names the uploaded file instead."""
    match = re.match(re.escape(IMAGE_BYTES) + r"\[(\d+)\]: ", message)
    if match and int(match.group(1)) < len(names):
        return f"file '{names[int(match.group(1))]}': {message[match.end():]}"  # names are escaped already
    return message


def _load_page() -> tuple[str, str]:
    """The page and a Content-Security-Policy that allows only its own inline script and style."""
    page = importlib.resources.files("histoedge.serving").joinpath(PAGE_FILE).read_text("utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                        for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           f"img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
           f"frame-ancestors 'none'")
    return page, csp


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise HistoedgeError(f"cannot listen for HTTP on {host}:{port}: {error}") from None
    sock.setblocking(False)
    return sock


class RestServer:
    """uvicorn serving :class:`RestApp` in a thread of this process.

    Args:
        dataplane, metrics, settings: as for :class:`RestApp`; TLS comes from the same
            ``--tls-*`` settings as gRPC's.
        status: the status page's data.
    """

    def __init__(self, dataplane: DataPlane, metrics: ServerMetrics, settings: ServerSettings,
                 status: StatusReport | None = None, auth: TokenAuth | None = None) -> None:
        self.settings = settings
        self.rest = RestApp(dataplane, metrics, settings, status, auth)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "RestServer":
        settings = self.settings
        tls = {}
        if settings.tls_cert is not None:
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        config = uvicorn.Config(
            self.rest.app, log_config=None, access_log=False, lifespan="off", server_header=False,
            timeout_graceful_shutdown=max(1, round(settings.grace_seconds)), **tls)
        try:
            config.load()  # reads the certificates now, so a bad file fails the start
        except (OSError, ssl.SSLError) as error:
            raise HistoedgeError(f"cannot set up HTTPS: {error}") from None
        sock = _listen(settings.host, settings.http_port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="http-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HistoedgeError(f"the HTTP server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def begin_stop(self) -> None:
        """Stop accepting connections; requests in flight go on (up to the grace period)."""
        if self._server is not None:
            self._server.should_exit = True

    def stop(self, grace: float | None = None) -> None:
        """Stop and wait for requests in flight (at most ``grace`` seconds, then a little more)."""
        self.begin_stop()
        if self._thread is not None:
            self._thread.join((self.settings.grace_seconds if grace is None else grace) + 2)
        self.rest.executor.shutdown(wait=False)
