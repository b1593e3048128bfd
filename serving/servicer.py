"""gRPC servicer of ``inference.GRPCInferenceService``: protobuf <-> internal types, nothing more.

Errors become gRPC status codes in one place, :data:`STATUS_CODES`.  On a
``ModelStreamInfer`` stream an error answers only its own request (``error_message``,
as Triton does) and the stream goes on.

Unary requests arrive as bytes and are parsed here (:func:`add_to_server`):
grpcio's own deserialization-failure path answers INTERNAL, logs a traceback
and keeps about 18 KiB per failed request, which any client could repeat.  A
message that does not parse is answered INVALID_ARGUMENT.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import queue
import threading
import time
import traceback

import grpc
from google.protobuf.message import DecodeError

from histoedge.serving import codecs
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving.dataplane import DataPlane
from histoedge.serving.drain import Drain
from histoedge.serving.errors import (CancelledError, DeadlineExceededError, InvalidInputError,
                            ModelNotFoundError, ModelNotReadyError, QueueFullError,
                            ServerClosingError, ServingError)
from histoedge.serving.schema import InferenceRequest, InferenceResponse, ModelMetadata
from histoedge.serving.untrusted import bounded_message

log = logging.getLogger(__name__)

_NO_DEADLINE_SECONDS = 365 * 24 * 3600.0
# Requests of one stream answered at the same time: enough to fill the batcher from one
# client, few enough that a stream cannot hold every handler thread.
STREAM_WINDOW = 8
_END = object()

STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    CancelledError: grpc.StatusCode.CANCELLED,
    ServerClosingError: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: ServingError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def _rpc(method):
    """Count the call for the drain; turn ServingErrors into their status code, anything else into INTERNAL.

    Only ModelInfer is refused while the server drains; readiness and metadata calls still answer.
    """
    refuse_when_closing = method.__name__ == "ModelInfer"

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            drain = getattr(self, "drain", None)  # servicers without one (monitoring) are not drained
            with drain.request(refuse_when_closing) if drain is not None else contextlib.nullcontext():
                return method(self, request, context)
        except ServingError as error:
            code = status_code(error)
            message = bounded_message(str(error))
            log.warning("%s: %s: %s", method.__name__, code.name, message)
            context.abort(code, message)
        except Exception as error:  # noqa: BLE001 - a request must never take the server down
            message = bounded_message(f"{type(error).__name__}: {error}")
            # Where it was raised, but no traceback: its text could carry client input unescaped.
            where = traceback.extract_tb(error.__traceback__)[-1]
            log.error("%s: INTERNAL: %s (at %s:%d)", method.__name__, message, where.filename, where.lineno)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {message}")
    return wrapper


def _parsing(behavior, deserializer):
    """Wrap a unary handler that now receives bytes: parse them, or answer INVALID_ARGUMENT."""
    # grpc reads the wrapped signature (functools.wraps) and may pass a third argument,
    # e.g. the health service's send_response_callback; pass on whatever comes.
    @functools.wraps(behavior)
    def parse_then_call(data: bytes, context, *more):
        try:
            request = deserializer(data)
        except (DecodeError, ValueError, TypeError, RecursionError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request is not a valid protobuf message ({type(error).__name__})")
        return behavior(request, context, *more)
    return parse_then_call


class _Capture:
    """Stands in for a grpc.Server to collect a generated ``add_..._to_server``'s handlers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def parsed_in_python(add_generated, servicer) -> tuple[str, dict[str, grpc.RpcMethodHandler]]:
    """The service name and handlers ``add_generated`` would register, with every unary
    request (unary-unary and unary-stream) taken as bytes and parsed in Python (see the module doc)."""
    capture = _Capture()
    add_generated(servicer, capture)
    handlers = {}
    for name, handler in capture.handlers.items():
        if handler.request_deserializer is not None and handler.unary_unary is not None:
            handler = grpc.unary_unary_rpc_method_handler(
                _parsing(handler.unary_unary, handler.request_deserializer),
                request_deserializer=None, response_serializer=handler.response_serializer)
        elif handler.request_deserializer is not None and handler.unary_stream is not None:
            handler = grpc.unary_stream_rpc_method_handler(
                _parsing(handler.unary_stream, handler.request_deserializer),
                request_deserializer=None, response_serializer=handler.response_serializer)
        handlers[name] = handler
    return capture.service, handlers


def add_to_server(add_generated, servicer, server: grpc.Server) -> None:
    """Register ``servicer`` as ``add_generated`` would, but parsing unary requests in Python.

    Example::

        add_to_server(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(plane), server)
    """
    service, handlers = parsed_in_python(add_generated, servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, drain: Drain | None = None) -> None:
        self.dataplane = dataplane
        self.drain = drain if drain is not None else Drain()

    @_rpc
    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dataplane.live())

    @_rpc
    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @_rpc
    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))

    @_rpc
    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    @_rpc
    def ModelMetadata(self, request, context):
        return metadata_to_pb(self.dataplane.model_metadata(request.name, request.version))

    @_rpc
    def ModelInfer(self, request, context):
        internal = request_from_pb(request, context.time_remaining())
        context.add_callback(internal.cancel.cancel)
        return response_to_pb(self.dataplane.infer(internal))

    def ModelStreamInfer(self, request_iterator, context):
        """Answer each request of the stream as it completes (at most STREAM_WINDOW at a time)."""
        answers: queue.Queue = queue.Queue()
        window = threading.BoundedSemaphore(STREAM_WINDOW)
        tokens: set = set()
        lock = threading.Lock()
        pool = concurrent.futures.ThreadPoolExecutor(STREAM_WINDOW, thread_name_prefix="stream")

        def cancel_all() -> None:
            with lock:
                pending = list(tokens)
            for token in pending:
                token.cancel()

        def answer(message) -> None:
            try:
                with self.drain.request():  # each request of a stream drains like a ModelInfer
                    internal = request_from_pb(message, context.time_remaining())
                    with lock:
                        tokens.add(internal.cancel)
                    try:
                        reply = pb.ModelStreamInferResponse(
                            infer_response=response_to_pb(self.dataplane.infer(internal)))
                    finally:
                        with lock:
                            tokens.discard(internal.cancel)
            except Exception as error:  # noqa: BLE001 - one bad request must not end the stream
                reply = stream_error(message, error)
            answers.put(reply)
            window.release()

        def read() -> None:
            futures = []
            try:
                for message in request_iterator:
                    window.acquire()
                    futures.append(pool.submit(answer, message))
            except Exception as error:  # noqa: BLE001 - the client went away or broke the stream
                log.info("ModelStreamInfer: stream ended: %s", type(error).__name__)
            concurrent.futures.wait(futures)
            answers.put(_END)

        context.add_callback(cancel_all)
        reader = threading.Thread(target=read, name="stream-reader", daemon=True)
        reader.start()
        try:
            while True:
                reply = answers.get()
                if reply is _END:
                    return
                yield reply
        finally:
            cancel_all()
            pool.shutdown(wait=False, cancel_futures=True)


def stream_error(message: pb.ModelInferRequest, error: Exception) -> pb.ModelStreamInferResponse:
    """A stream answer that reports ``error`` for the request ``message`` (id, model, version kept)."""
    if isinstance(error, ServingError):
        text = bounded_message(f"{status_code(error).name}: {error}")
        log.warning("ModelStreamInfer: %s", text)
    else:
        text = bounded_message(f"INTERNAL: internal error: {type(error).__name__}: {error}")
        log.error("ModelStreamInfer: %s", text)
    return pb.ModelStreamInferResponse(error_message=text, infer_response=pb.ModelInferResponse(
        id=message.id, model_name=message.model_name, model_version=message.model_version))


def request_from_pb(message: pb.ModelInferRequest, time_remaining: float | None) -> InferenceRequest:
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = [codecs.decode_input(tensor, raw[index] if raw else None)
              for index, tensor in enumerate(message.inputs)]
    # Without a deadline gRPC reports an effectively infinite time remaining.
    no_deadline = time_remaining is None or time_remaining > _NO_DEADLINE_SECONDS
    deadline = None if no_deadline else time.monotonic() + time_remaining
    return InferenceRequest(
        model_name=message.model_name, model_version=message.model_version, inputs=inputs,
        outputs=[output.name for output in message.outputs], id=message.id, deadline=deadline,
        protocol="grpc",
        parameters={key: _parameter_value(value) for key, value in message.parameters.items()})


def _parameter_value(parameter: pb.InferParameter):
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def response_to_pb(response: InferenceResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id)
    for tensor in response.outputs:
        output, raw = codecs.encode_output(tensor)
        message.outputs.append(output)
        message.raw_output_contents.append(raw)
    return message


def _parameter(value) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def metadata_to_pb(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    message = pb.ModelMetadataResponse(
        name=metadata.name, versions=list(metadata.versions), platform=metadata.platform,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in metadata.inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in metadata.outputs])
    for key, value in metadata.parameters.items():
        message.parameters[key].CopyFrom(_parameter(value))
    return message
