"""Open Inference Protocol REST bodies <-> internal types (JSON tensors and binary tensor data).

A request body is a JSON object, optionally followed by binary tensor data: the
``Inference-Header-Content-Length`` header then gives the length of the JSON part,
and every input with ``parameters.binary_data_size`` takes that many bytes of the
rest, in input order (the binary tensor data extension that ``tritonclient.http``
uses).  Binary data has the layout of gRPC's raw contents (row-major little-endian;
``BYTES`` elements prefixed with a 4-byte length), so :mod:`serving.codecs` decodes it.

JSON ``data`` is a row-major list (nested or flat).  ``BYTES`` elements are
strings, sent as UTF-8, or base64 when the input has ``parameters.content_type``
``"base64"`` (so JSON clients can send encoded images too).

Example::

    request = request_from_body(body, header_length, "breast", "", protocol="rest")
    header, binary = response_to_body(plane.infer(request), binary_outputs=request_binary)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass

import numpy as np

from histoedge.serving.codecs import DATATYPES, _split_bytes, _typed_array, encode_bytes
from histoedge.serving.errors import InvalidInputError
from histoedge.serving.schema import InferenceRequest, InferenceResponse, ModelMetadata, Tensor

MAX_ID_CHARS = 256


@dataclass
class RestRequest:
    """A decoded REST infer body: the internal request and how the client wants its outputs."""

    request: InferenceRequest
    binary_all: bool            # request-level parameters.binary_data_output
    binary_outputs: set[str]    # outputs asking for parameters.binary_data


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string")
    return value


def _bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be true or false")
    return value


def parse_header(header: bytes) -> dict:
    """The JSON object of a request; InvalidInputError for anything else."""
    try:
        value = json.loads(header)
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise InvalidInputError(f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInputError("the request body nests JSON too deeply") from None
    return _object(value, "the request body")


def request_from_body(body: bytes, header_length: int | None, model_name: str, model_version: str,
                      protocol: str = "rest") -> RestRequest:
    """Decode an infer request body (JSON, or JSON + binary tensor data)."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    message = parse_header(header)
    parameters = _object(message.get("parameters", {}), "'parameters'")
    inputs_json = message.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise InvalidInputError("'inputs' must be a non-empty list of tensors")
    inputs, offset = [], 0
    for index, item in enumerate(inputs_json):
        tensor, used = _decode_input(_object(item, f"inputs[{index}]"), index, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - offset} bytes of binary tensor data that no input claims")
    outputs, binary_outputs = [], set()
    requested = message.get("outputs", [])
    if not isinstance(requested, list):
        raise InvalidInputError("'outputs' must be a list")
    for index, item in enumerate(requested):
        item = _object(item, f"outputs[{index}]")
        name = _string(item.get("name"), f"outputs[{index}].name")
        outputs.append(name)
        output_parameters = _object(item.get("parameters", {}), f"outputs[{index}].parameters")
        if _bool(output_parameters.get("binary_data", False), f"outputs[{index}].parameters.binary_data"):
            binary_outputs.add(name)
    request_id = message.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string")
    return RestRequest(
        request=InferenceRequest(
            model_name=model_name, model_version=model_version, inputs=inputs, outputs=outputs,
            id=request_id[:MAX_ID_CHARS], deadline=_deadline(parameters), protocol=protocol),
        binary_all=_bool(parameters.get("binary_data_output", False), "parameters.binary_data_output"),
        binary_outputs=binary_outputs)


def _deadline(parameters: dict) -> float | None:
    """``parameters.timeout`` is in microseconds, as Triton's clients send it."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInputError("parameters.timeout must be a positive number of microseconds")
    return time.monotonic() + timeout / 1e6


def _shape(value, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInputError(f"input '{name}': 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise InvalidInputError(f"input '{name}': shape {value} has a negative dimension")
    return tuple(value)


def _decode_input(item: dict, index: int, binary: memoryview | bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and the number of binary bytes it used."""
    name = _string(item.get("name"), f"inputs[{index}].name")
    datatype = _string(item.get("datatype"), f"input '{name}': 'datatype'")
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"input '{name}': unknown datatype '{datatype}' (known: {', '.join(DATATYPES)})")
    shape = _shape(item.get("shape"), name)
    count = math.prod(shape)
    dtype = DATATYPES[datatype][0]
    parameters = _object(item.get("parameters", {}), f"input '{name}': 'parameters'")
    size = parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInputError(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidInputError(f"input '{name}': give either binary data or 'data', not both")
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input '{name}': binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)")
        raw = bytes(binary[offset:offset + size])
        if datatype == "BYTES":
            data = _split_bytes(name, raw, count)
        else:
            if size != count * dtype.itemsize:
                raise InvalidInputError(
                    f"input '{name}': binary data holds {size} bytes but shape {list(shape)} "
                    f"of {datatype} needs {count * dtype.itemsize}")
            data = np.frombuffer(raw, dtype=dtype)
        return Tensor(name, datatype, data.reshape(shape)), size
    if "data" not in item:
        raise InvalidInputError(f"input '{name}': no 'data' and no binary_data_size")
    if datatype == "BYTES":
        data = _json_bytes(name, item["data"], parameters.get("content_type"))
    else:
        data = _json_numbers(name, item["data"], datatype, dtype)
    if data.size != count:
        raise InvalidInputError(
            f"input '{name}': 'data' holds {data.size} elements but shape {list(shape)} needs {count}")
    return Tensor(name, datatype, data.reshape(shape)), 0


def _flatten(data) -> list:
    """A row-major flat list from a nested JSON list (or a single value)."""
    if not isinstance(data, list):
        return [data]
    flat, stack = [], [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _json_numbers(name: str, data, datatype: str, dtype: np.dtype) -> np.ndarray:
    flat = _flatten(data)
    if datatype == "BOOL":
        allowed: tuple[type, ...] = (bool,)
    elif dtype.kind in "ui":
        allowed = (int,)
    else:
        allowed = (int, float)
    if any(isinstance(v, bool) != (datatype == "BOOL") or not isinstance(v, allowed) for v in flat):
        raise InvalidInputError(f"input '{name}': 'data' must hold only {datatype} values")
    if datatype == "BOOL":
        return np.asarray(flat, dtype=bool)
    return _typed_array(name, flat, dtype) if dtype.kind in "ui" else np.asarray(flat, dtype=dtype)


def _json_bytes(name: str, data, content_type) -> np.ndarray:
    flat = _flatten(data)
    if not all(isinstance(v, str) for v in flat):
        raise InvalidInputError(f"input '{name}': BYTES 'data' must hold strings")
    items = np.empty(len(flat), dtype=object)
    if content_type == "base64":
        try:
            items[:] = [base64.b64decode(v, validate=True) for v in flat]
        except (binascii.Error, ValueError) as error:
            raise InvalidInputError(f"input '{name}': not valid base64: {error}") from None
    elif content_type in (None, "str"):
        items[:] = [v.encode("utf-8") for v in flat]
    else:
        raise InvalidInputError(f"input '{name}': content_type must be 'str' or 'base64'")
    return items


def response_to_body(response: InferenceResponse, binary_all: bool, binary_outputs: set[str]
                     ) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data (empty when every output is JSON)."""
    outputs, chunks = [], []
    for tensor in response.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_all or tensor.name in binary_outputs:
            if tensor.datatype == "BYTES":
                raw = encode_bytes(tensor.data.reshape(-1))
            else:
                raw = np.ascontiguousarray(tensor.data, dtype=DATATYPES[tensor.datatype][0]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif tensor.datatype == "BYTES":
            entry["data"] = [bytes(v).decode("utf-8", "replace") for v in tensor.data.reshape(-1)]
        else:
            entry["data"] = tensor.data.reshape(-1).tolist()
        outputs.append(entry)
    message = {"model_name": response.model_name, "model_version": response.model_version,
               "outputs": outputs}
    if response.id:
        message["id"] = response.id
    return json.dumps(message, separators=(",", ":")).encode(), b"".join(chunks)


def metadata_to_json(metadata: ModelMetadata) -> dict:
    def tensor(t):
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {"name": metadata.name, "versions": list(metadata.versions), "platform": metadata.platform,
            "inputs": [tensor(t) for t in metadata.inputs],
            "outputs": [tensor(t) for t in metadata.outputs],
            "parameters": dict(metadata.parameters)}
