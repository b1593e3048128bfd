"""Hypothesis strategies for malformed ModelInfer traffic, shared by the fuzz test and bench/fuzz_server.py.

Two kinds of input: structured ``ModelInferRequest`` messages whose every field
is drawn from near-valid and hostile values (shapes with huge, negative and 65
dimensions; datatypes that do not exist; names with newlines, NULs and bidi
overrides; versions such as "²" or 5,000 digits; image bytes that are cut,
forged or not images), and raw bytes (a valid request cut, bit-flipped or
replaced by noise) sent as they are.

Example::

    from hypothesis import given
    @given(request_bytes(size=16))
    def test(data): ...
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import strategies as st

from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving.codecs import DATATYPES, encode_bytes

HOSTILE_TEXT = ["", "tiny", "image", "image_bytes", "label", "probabilities", "a\nCRITICAL forged line",
                "nul\x00byte", "bidi\u202egnp.exe", "x" * 20_000, "²", "①", "١", "0", "01", "1", "9" * 5000,
                "-1", " 1", "1 ", "\ud7ff", "../../etc/passwd"]
DIMENSIONS = [0, 1, 2, 3, 16, 17, 255, 2**31, 2**62, 2**63 - 1, -1, -(2**63)]


def _text():
    return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))


def _shape(size: int):
    plausible = st.sampled_from([[1, size, size, 3], [2, size, size, 3], [1], [2], [0], [1, 1], [],
                                 [0, 2**62, 2**62], [0, 2**63 - 1], [0, size, size, 3]])
    hostile = st.lists(st.sampled_from(DIMENSIONS), max_size=6)
    many = st.just([1] * 65)
    return st.one_of(plausible, hostile, many)


def _image_bytes(size: int):
    from tests.serving.helpers import encode, sample_images  # noqa: PLC0415 - needs cv2

    png = encode(sample_images(1, size=size)[0])
    jpeg = encode(sample_images(1, size=size)[0], ".jpg")
    big_jpeg = bytearray(jpeg)
    sof = big_jpeg.find(b"\xff\xc0")
    big_jpeg[sof + 5:sof + 9] = struct.pack(">HH", 2000, 2000)  # forged frame size
    return st.one_of(
        st.sampled_from([png, jpeg, bytes(big_jpeg), b"", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                         b"BM" + b"\x00" * 30, b"II*\x00" + b"\xff" * 8]),
        st.builds(lambda data, cut: data[:cut], st.sampled_from([png, jpeg]), st.integers(0, 400)),
        st.binary(max_size=64))


@st.composite
def infer_requests(draw, size: int = 16, model: str = "tiny") -> pb.ModelInferRequest:
    """A ModelInferRequest with hostile or near-valid values in every field."""
    request = pb.ModelInferRequest(
        model_name=draw(st.one_of(st.just(model), _text())),
        model_version=draw(st.one_of(st.just(""), _text())), id=draw(_text()))
    raw_mode = draw(st.sampled_from(["raw", "contents", "mixed", "none"]))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(["image", "image_bytes"]), _text()))
        datatype = draw(st.one_of(st.sampled_from(list(DATATYPES)), _text()))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=draw(_shape(size)))
        if raw_mode in ("raw", "mixed"):
            if datatype == "BYTES" and draw(st.booleans()):
                items = draw(st.lists(_image_bytes(size), max_size=3))
                request.raw_input_contents.append(encode_bytes(items))
            else:
                count = draw(st.sampled_from([0, 0, 1, size * size * 3, 2 * size * size * 3, 7]))
                request.raw_input_contents.append(bytes(draw(st.binary(min_size=count, max_size=count))))
        if raw_mode in ("contents", "mixed"):
            field = draw(st.sampled_from(["bool_contents", "int_contents", "int64_contents", "uint_contents",
                                          "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]))
            values = draw(st.lists(_content_value(field), max_size=8))
            getattr(tensor.contents, field).extend(values)
        for key in draw(st.lists(_text(), max_size=2)):
            tensor.parameters[key].string_param = draw(_text())
    for name in draw(st.lists(st.one_of(st.sampled_from(["probabilities", "label"]), _text()), max_size=3)):
        request.outputs.add(name=name)
    return request


def _content_value(field: str):
    return {
        "bool_contents": st.booleans(),
        "int_contents": st.integers(-(2**31), 2**31 - 1),
        "int64_contents": st.integers(-(2**63), 2**63 - 1),
        "uint_contents": st.integers(0, 2**32 - 1),
        "uint64_contents": st.integers(0, 2**64 - 1),
        "fp32_contents": st.floats(width=32, allow_nan=True),
        "fp64_contents": st.floats(allow_nan=True),
        "bytes_contents": st.binary(max_size=16),
    }[field]


def valid_request(images: np.ndarray, model: str = "tiny") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


@st.composite
def request_bytes(draw, size: int = 16, model: str = "tiny") -> bytes:
    """Wire bytes: a valid request cut short, bit-flipped, spliced with noise, or pure noise."""
    from tests.serving.helpers import sample_images  # noqa: PLC0415

    images = sample_images(1, seed=draw(st.integers(0, 3)), size=size)
    base = valid_request(images, model).SerializeToString()
    kind = draw(st.sampled_from(["cut", "flip", "splice", "noise", "structured"]))
    if kind == "cut":
        return base[:draw(st.integers(0, len(base) - 1))]
    if kind == "flip":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 8))):
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "splice":
        start = draw(st.integers(0, len(base)))
        return base[:start] + draw(st.binary(max_size=64)) + base[start:]
    if kind == "noise":
        return draw(st.binary(max_size=512))
    return draw(infer_requests(size, model)).SerializeToString()
