"""Decode encoded image tiles (PNG, JPEG, TIFF, BMP) into model input, safely.

The image size is read from the file header before any pixel is decoded, so a
small file that claims a huge image (a decompression bomb) is refused without
allocating it.  Formats whose header we do not parse are refused too.

Example::

    batch = decode_images([png_bytes, jpeg_bytes], size=(64, 64), max_pixels=50_000_000)
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from histoedge.export.manifest import IMAGE_BYTES
from histoedge.serving.errors import InvalidInputError

DEFAULT_MAX_PIXELS = 50_000_000


def image_dimensions(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) read from the header; raise InvalidInputError if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidInputError("PNG without an IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:3] == b"\xff\xd8\xff":
        return ("JPEG", *_jpeg_dimensions(data))
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ("TIFF", *_tiff_dimensions(data))
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return "BMP", abs(width), abs(height)
    raise InvalidInputError("not a PNG, JPEG, TIFF or BMP image (unrecognised header)")


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise InvalidInputError("corrupt JPEG header")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if offset + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return width, height
        offset += 2 + length
    raise InvalidInputError("JPEG without a frame header (SOF)")


def _tiff_dimensions(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (entries,) = struct.unpack(order + "H", data[ifd:ifd + 2])
        found: dict[int, int] = {}
        for index in range(entries):
            start = ifd + 2 + 12 * index
            tag, kind = struct.unpack(order + "HH", data[start:start + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength
                fmt = order + ("H" if kind == 3 else "I")
                found[tag] = struct.unpack(fmt, data[start + 8:start + 8 + struct.calcsize(fmt)])[0]
    except struct.error as error:
        raise InvalidInputError("corrupt TIFF header") from error
    if 256 not in found or 257 not in found:
        raise InvalidInputError("TIFF without image width and length")
    return found[256], found[257]


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode one encoded image to RGB uint8 [H, W, 3] at ``size`` = (height, width)."""
    kind, width, height = image_dimensions(data)
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"{kind} header gives an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{kind} image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (server option --max-image-pixels)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidInputError(f"could not decode the {kind} image (corrupt or truncated)")
    if image.shape[0] * image.shape[1] > max_pixels:  # header and body disagreed
        raise InvalidInputError(f"decoded image is over the limit of {max_pixels} pixels")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def decode_images(items, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode a sequence of encoded images to uint8 [N, H, W, 3]; errors name the element index."""
    batch = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    for index, data in enumerate(items):
        try:
            batch[index] = decode_image(bytes(data), size, max_pixels)
        except InvalidInputError as error:
            raise InvalidInputError(f"{IMAGE_BYTES}[{index}]: {error}") from None
    return batch
