"""Decode encoded image tiles (PNG, JPEG, TIFF, BMP) into model input, safely.

The image size is read from the file header before any pixel is decoded, so a
small file that claims a huge image (a decompression bomb) is refused without
allocating it.  Formats whose header we do not parse are refused too.  A JPEG
must end with its end-of-image marker and hold at least one bit of coded data
per 8x8 block its header claims (libjpeg would otherwise fill a forged or cut
frame with grey and return it as if it were whole); the decoder already refuses
cut PNG, TIFF and BMP files.  A :class:`DecodeBudget` bounds the memory that all
decodes in flight may use together.

Example::

    batch = decode_images([png_bytes, jpeg_bytes], size=(64, 64), max_pixels=4_194_304)
"""

from __future__ import annotations

import struct
import threading
import time
from contextlib import contextmanager

import numpy as np

from histoedge.export.manifest import IMAGE_BYTES
from histoedge.imaging import ImageDecodeError, area_resize, decode_rgb
from histoedge.serving.errors import InvalidInputError, QueueFullError

DEFAULT_MAX_PIXELS = 2048 * 2048
# Bytes one decoded pixel may cost while decoding: Pillow's 4-byte frame plus the 3-byte
# array copied out of it, or the frame plus decoder working memory (a progressive JPEG
# keeps its coefficients, 2 bytes each).
DECODE_BYTES_PER_PIXEL = 8


class DecodeBudget:
    """Bytes of decoding memory shared by every request; a decode waits for its share.

    Args:
        limit_bytes: what all decodes in flight may use together.
        wait_s: longest wait for room before the request is refused (RESOURCE_EXHAUSTED).
    """

    def __init__(self, limit_bytes: int, wait_s: float = 5.0) -> None:
        self.limit_bytes = int(limit_bytes)
        self.wait_s = wait_s
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int):
        nbytes = min(int(nbytes), self.limit_bytes)  # one image never waits for more than all
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_use + nbytes > self.limit_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise QueueFullError(
                        "the server is decoding too many large images at once "
                        "(--decode-memory-mb); retry later")
                self._cond.wait(remaining)
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


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
    return _jpeg_frame(data)[:2]


def _jpeg_frame(data: bytes) -> tuple[int, int, int]:
    """(width, height, SOF marker) from a JPEG's frame header."""
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
            return width, height, marker
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


_ARITHMETIC_SOF = (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _check_jpeg_complete(data: bytes, width: int, height: int) -> None:
    # Coded data never holds FF D9 (a data FF is followed by 00), so an end marker after the
    # first scan header means the file was not cut; bytes after it (some cameras add them) are fine.
    scan = data.find(b"\xff\xda")
    if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
        raise InvalidInputError("truncated JPEG (no end-of-image marker after its scan)")
    marker = _jpeg_frame(data)[2]
    blocks = -(-width // 8) * -(-height // 8)
    # Huffman coding spends at least one bit per block on its DC coefficient.
    if marker not in _ARITHMETIC_SOF and len(data) * 8 < blocks:
        raise InvalidInputError(
            f"truncated JPEG: {len(data)} bytes cannot hold a {width}x{height} image")


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int,
                 budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode one encoded image to RGB uint8 [H, W, 3] at ``size`` = (height, width)."""
    kind, width, height = image_dimensions(data)
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"{kind} header gives an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{kind} image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (server option --max-image-pixels)")
    if kind == "JPEG":
        _check_jpeg_complete(data, width, height)
    if budget is None:
        return _decode(data, kind, size, max_pixels)
    with budget.reserve(width * height * DECODE_BYTES_PER_PIXEL):
        return _decode(data, kind, size, max_pixels)


def _decode(data: bytes, kind: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    # The decoder and the resize are training's (histoedge.imaging): the same pixels.
    try:
        image = decode_rgb(data)
    except ImageDecodeError:
        raise InvalidInputError(f"could not decode the {kind} image (corrupt or truncated)") from None
    if image.shape[0] * image.shape[1] > max_pixels:  # header and body disagreed
        raise InvalidInputError(f"decoded image is over the limit of {max_pixels} pixels")
    if image.shape[:2] != tuple(size):
        image = area_resize(image, size)
    return image


def decode_images(items, size: tuple[int, int], max_pixels: int,
                  budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode a sequence of encoded images to uint8 [N, H, W, 3]; errors name the element index."""
    batch = np.empty((len(items), size[0], size[1], 3), dtype=np.uint8)
    for index, data in enumerate(items):
        try:
            batch[index] = decode_image(bytes(data), size, max_pixels, budget)
        except InvalidInputError as error:
            raise InvalidInputError(f"{IMAGE_BYTES}[{index}]: {error}") from None
    return batch
