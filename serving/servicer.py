"""gRPC servicer of ``inference.GRPCInferenceService``: protobuf <-> internal types, nothing more.

Errors become gRPC status codes in one place, :data:`STATUS_CODES`.
"""

from __future__ import annotations

import functools
import logging
import time

import grpc

from histoedge.serving import codecs
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving._proto import inference_pb2_grpc as pb_grpc
from histoedge.serving.dataplane import DataPlane
from histoedge.serving.errors import (CancelledError, DeadlineExceededError, InvalidInputError,
                            ModelNotFoundError, ModelNotReadyError, QueueFullError,
                            ServerClosingError, ServingError)
from histoedge.serving.schema import InferenceRequest, InferenceResponse, ModelMetadata

log = logging.getLogger(__name__)

_NO_DEADLINE_SECONDS = 365 * 24 * 3600.0

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
    """Turn ServingErrors into their status code and anything else into INTERNAL."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as error:
            code = status_code(error)
            log.warning("%s: %s: %s", method.__name__, code.name, error)
            context.abort(code, str(error))
        except Exception as error:  # noqa: BLE001 - a request must never take the server down
            log.error("%s: INTERNAL: %s: %s", method.__name__, type(error).__name__, error)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}")
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

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
