"""Image headers, pixel limits and tensor codecs, without a server."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from histoedge.serving import codecs, images
from histoedge.serving._proto import inference_pb2 as pb
from histoedge.serving.errors import InvalidInputError
from histoedge.serving.schema import Tensor
from tests.serving.helpers import encode, sample_images


@pytest.mark.parametrize("ext, kind", [(".png", "PNG"), (".jpg", "JPEG"), (".tiff", "TIFF"), (".bmp", "BMP")])
def test_header_dimensions_match_the_image(ext, kind):
    image = np.zeros((37, 53, 3), dtype=np.uint8)
    assert images.image_dimensions(encode(image, ext)) == (kind, 53, 37)


def test_huge_jpeg_header_is_refused_before_decoding():
    data = bytearray(encode(sample_images(1)[0], ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # claims 3.6 Gpx
    with pytest.raises(InvalidInputError, match="over the limit"):
        images.decode_image(bytes(data), (16, 16), images.DEFAULT_MAX_PIXELS)


def test_pixel_limit_is_configurable():
    data = encode(np.zeros((40, 40, 3), dtype=np.uint8))
    assert images.decode_image(data, (16, 16), max_pixels=1600).shape == (16, 16, 3)
    with pytest.raises(InvalidInputError, match="1600 pixels, over the limit of 1599"):
        images.decode_image(data, (16, 16), max_pixels=1599)


def test_grayscale_and_colour_order():
    gray = np.full((16, 16), 90, dtype=np.uint8)
    ok, data = cv2.imencode(".png", gray)
    assert (images.decode_image(data.tobytes(), (16, 16), 10_000) == 90).all()
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # red
    decoded = images.decode_image(encode(rgb), (16, 16), 10_000)
    assert decoded[0, 0].tolist() == [255, 0, 0]


def test_errors_name_the_element():
    with pytest.raises(InvalidInputError, match=r"image_bytes\[1\]"):
        images.decode_images([encode(sample_images(1)[0]), b"GIF89a"], (16, 16), 10_000)


@pytest.mark.parametrize("datatype, values", [
    ("FP32", np.arange(6, dtype=np.float32)), ("INT64", np.arange(6, dtype=np.int64)),
    ("BOOL", np.array([True, False] * 3)), ("UINT16", np.arange(6, dtype=np.uint16))])
def test_codecs_round_trip_raw_and_typed(datatype, values):
    message, raw = codecs.encode_input(Tensor("x", datatype, values.reshape(2, 3)))
    decoded = codecs.decode_input(message, raw)
    assert decoded.shape == (2, 3) and (decoded.data == values.reshape(2, 3)).all()
    typed = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[2, 3])
    getattr(typed.contents, codecs.DATATYPES[datatype][1]).extend(values.tolist())
    assert (codecs.decode_input(typed, None).data == values.reshape(2, 3)).all()


def test_codecs_bytes_output_layout():
    labels = np.array([b"benign", b"malignant"], dtype=object)
    message, raw = codecs.encode_output(Tensor("label", "BYTES", labels))
    assert raw == struct.pack("<I", 6) + b"benign" + struct.pack("<I", 9) + b"malignant"
    assert list(codecs.decode_output(message, raw).data) == [b"benign", b"malignant"]


def test_codecs_reject_bad_contents():
    typed = pb.ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[2])
    typed.contents.uint_contents.extend([1, 300])
    with pytest.raises(InvalidInputError, match="out of range"):
        codecs.decode_input(typed, None)
    with pytest.raises(InvalidInputError, match="not both"):
        codecs.decode_input(typed, b"\x01\x02")
    negative = pb.ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[-1])
    with pytest.raises(InvalidInputError, match="negative"):
        codecs.decode_input(negative, b"")
    huge = pb.ModelInferRequest.InferInputTensor(name="b", datatype="BYTES", shape=[10**12])
    with pytest.raises(InvalidInputError, match="too few"):
        codecs.decode_input(huge, codecs.encode_bytes([b"ab"]))
    with pytest.raises(InvalidInputError, match="left over"):
        codecs.decode_input(pb.ModelInferRequest.InferInputTensor(name="b", datatype="BYTES", shape=[1]),
                            codecs.encode_bytes([b"ab"]) + b"x")
