"""Encode and decode Open Inference Protocol tensors (the only module that does).

Inputs arrive either in ``raw_input_contents`` (flattened row-major bytes,
little-endian) or in the typed ``contents`` fields; outputs always leave in
``raw_output_contents``, which is what Triton's client reads.  A ``BYTES``
element is a 4-byte little-endian length followed by that many bytes.

Example::

    tensor = decode_input(request.inputs[0], request.raw_input_contents[0])
    message, raw = encode_output(Tensor(LABEL, "BYTES", np.array([b"benign"], dtype=object)))
"""

from __future__ import annotations

import math
import struct

import numpy as np

from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving.errors import InvalidInputError
from histoedge.serving.schema import Tensor
from histoedge.serving.untrusted import client_text

MAX_DIMENSIONS = 32  # numpy allows 64; no model input comes near either

# datatype -> (numpy dtype, InferTensorContents field)
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype(bool), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None),  # raw only, as the specification says
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}
_LENGTH = struct.Struct("<I")


def decode_input(tensor: "pb.ModelInferRequest.InferInputTensor", raw: bytes | None) -> Tensor:
    """Turn one request input (and its raw contents, if the request used them) into a Tensor."""
    name, datatype = client_text(tensor.name), tensor.datatype
    if datatype not in DATATYPES:
        raise InvalidInputError(
            f"input '{name}': unknown datatype '{client_text(datatype)}' (known: {', '.join(DATATYPES)})")
    if len(tensor.shape) > MAX_DIMENSIONS:
        raise InvalidInputError(
            f"input '{name}': shape has {len(tensor.shape)} dimensions, more than {MAX_DIMENSIONS}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"input '{name}': shape {_shown(shape)} has a negative dimension")
    count = math.prod(shape)
    dtype, field = DATATYPES[datatype]
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"input '{name}': give either raw_input_contents or contents, not both")
        if datatype == "BYTES":
            data = _split_bytes(name, raw, count)
        else:
            if len(raw) != count * dtype.itemsize:
                raise InvalidInputError(
                    f"input '{name}': raw contents hold {len(raw)} bytes but shape {_shown(shape)} "
                    f"of {datatype} needs {count * dtype.itemsize}")
            data = np.frombuffer(raw, dtype=dtype)
    else:
        if field is None:
            raise InvalidInputError(f"input '{name}': {datatype} must be sent in raw_input_contents")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise InvalidInputError(
                f"input '{name}': contents hold {len(values)} elements but shape {_shown(shape)} "
                f"needs {count}")
        if datatype == "BYTES":
            data = np.empty(count, dtype=object)
            data[:] = [bytes(v) for v in values]
        else:
            data = _typed_array(name, values, dtype)
    try:
        data = data.reshape(shape)
    except ValueError as error:  # an empty tensor can claim dimensions numpy cannot index
        raise InvalidInputError(f"input '{name}': unusable shape {_shown(shape)}: {error}") from None
    return Tensor(tensor.name, datatype, data)


def _shown(shape: tuple[int, ...]) -> str:
    """A shape for a message, shortened when a client sent dozens of dimensions."""
    text = str(list(shape))
    return text if len(text) <= 80 else text[:80] + "...]"


def _typed_array(name: str, values, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(values)
    if dtype.kind in "ui" and array.size and (array.min() < np.iinfo(dtype).min
                                              or array.max() > np.iinfo(dtype).max):
        raise InvalidInputError(f"input '{name}': contents out of range for {dtype.name}")
    return array.astype(dtype)


def _split_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    view = memoryview(raw)
    if count * _LENGTH.size > len(view):  # refuse before allocating for a made-up shape
        raise InvalidInputError(
            f"input '{name}': raw BYTES contents hold {len(view)} bytes, too few for {count} elements")
    items = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInputError(
                f"input '{name}': raw BYTES contents end after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInputError(
                f"input '{name}': BYTES element {index} claims {length} bytes, "
                f"only {len(view) - offset} remain")
        items[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise InvalidInputError(
            f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements")
    return items


def encode_bytes(items) -> bytes:
    """Serialise BYTES elements (bytes or str) as length-prefixed raw contents."""
    parts = []
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def encode_output(tensor: Tensor) -> tuple["pb.ModelInferResponse.InferOutputTensor", bytes]:
    """Return the output message (name, datatype, shape) and its raw contents."""
    message = pb.ModelInferResponse.InferOutputTensor(
        name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
    if tensor.datatype == "BYTES":
        raw = encode_bytes(tensor.data.reshape(-1))
    else:
        dtype = DATATYPES[tensor.datatype][0]
        raw = np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()
    return message, raw


def encode_input(tensor: Tensor) -> tuple["pb.ModelInferRequest.InferInputTensor", bytes]:
    """Client side: the input message and its raw contents."""
    message = pb.ModelInferRequest.InferInputTensor(
        name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
    if tensor.datatype == "BYTES":
        return message, encode_bytes(tensor.data.reshape(-1))
    dtype = DATATYPES[tensor.datatype][0]
    return message, np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def decode_output(message: "pb.ModelInferResponse.InferOutputTensor", raw: bytes) -> Tensor:
    """Client side: an output tensor from its message and raw contents."""
    shape = tuple(int(d) for d in message.shape)
    if message.datatype == "BYTES":
        data = _split_bytes(message.name, raw, math.prod(shape))
    else:
        data = np.frombuffer(raw, dtype=DATATYPES[message.datatype][0])
    return Tensor(message.name, message.datatype, data.reshape(shape))
