"""The pixels a model sees: decode an encoded image and area-resize it (one implementation).

Training (``histoedge.training.data.images``) and the server (``histoedge.serving.images``)
both call :func:`decode_rgb` and :func:`area_resize`, so a served image reaches the model
with exactly the pixels training fed it.  Only Pillow and numpy are needed, which keeps
OpenCV (about 170 MB) out of the serve image.

:func:`area_resize` reproduces OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_AREA)``
on uint8 images, including its arithmetic, so models trained with OpenCV's resize stay
valid (``tests/histoedge/test_imaging.py`` compares the two on random images and sizes):

* shrinking by whole factors on both axes: the mean of each block, rounded like OpenCV
  (``(sum + 2) >> 2`` for 2x2 blocks, float32 ``sum * (1 / area)`` to nearest-even otherwise);
* shrinking by other factors: the exact pixel-area weights OpenCV tabulates (float32),
  accumulated in OpenCV's order;
* enlarging (either axis): OpenCV's area variant of bilinear interpolation, two taps per
  axis with 11-bit fixed-point weights.

:func:`decode_rgb` follows ``cv2.imdecode(..., cv2.IMREAD_COLOR)``: EXIF orientation is
applied, alpha is dropped, grey and palette images become RGB, 16-bit samples keep their
high byte.

Example::

    rgb = area_resize(decode_rgb(png_bytes), (64, 64))     # uint8 [64, 64, 3]
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

_COEF_BITS = 11                       # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS
_ORIENTATION = 0x0112                 # the EXIF orientation tag


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode (corrupt, truncated or another format)."""


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP bytes to uint8 RGB [H, W, 3] as ``cv2.IMREAD_COLOR`` would.

    Raises:
        ImageDecodeError: empty, corrupt, truncated or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            # like OpenCV, turn the image upright; reading the tag is cheap, transposing is not
            upright = image.getexif().get(_ORIENTATION, 1) in (0, 1)
            pixels = _to_rgb(image if upright else ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a decodable image (unrecognised format)") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"not decoded: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image ({error})") from None
    # Pillow's frame is closed by now, so the writable copy does not raise the peak memory.
    return pixels if pixels.flags.writeable else pixels.copy()


def _to_rgb(image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grey: OpenCV keeps the high byte (value >> 8), Pillow's convert would clip.
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError("floating-point images are not supported")
    if mode in ("RGBA", "RGBX", "RGBa"):
        return np.ascontiguousarray(np.asarray(image)[..., :3])
    if mode in ("LA", "La"):
        image = image.getchannel(0)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] (or [H, W]) resized to ``size`` = (height, width) like cv2 INTER_AREA."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected uint8 [H, W] or [H, W, C], got {image.dtype} {list(image.shape)}")
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    height, width = image.shape[:2]
    if (height, width) == (out_h, out_w):
        return image.copy()
    planar = image.ndim == 2
    pixels = image[..., None] if planar else image
    if height >= out_h and width >= out_w:
        if height % out_h == 0 and width % out_w == 0:
            result = _shrink_whole(pixels, height // out_h, width // out_w)
        else:
            result = _shrink_area(pixels, out_h, out_w)
    else:
        result = _enlarge(pixels, out_h, out_w)
    return result[..., 0] if planar else result


def _shrink_whole(pixels: np.ndarray, fy: int, fx: int) -> np.ndarray:
    height, width, channels = pixels.shape
    out_h, out_w = height // fy, width // fx
    wide = np.uint16 if fy * fx <= 257 else np.uint32          # integer sums: order is free
    # Strided adds of whole slices beat numpy's axis reductions: first the rows of a block, then
    # its columns one channel plane at a time.  Adding [.., :channels] slices of interleaved
    # pixels instead runs numpy's inner loop over only `channels` elements (9x slower at 224 px).
    rows = pixels.reshape(out_h, fy, width, channels)
    columns = rows[:, 0].astype(wide)
    for index in range(1, fy):
        columns += rows[:, index]
    cells = columns.reshape(out_h, out_w, fx, channels)
    total = np.empty((out_h, out_w, channels), wide)
    for channel in range(channels):
        plane = total[:, :, channel]
        if fx > 1:
            np.add(cells[:, :, 0, channel], cells[:, :, 1, channel], out=plane)
        else:
            plane[...] = cells[:, :, 0, channel]
        for index in range(2, fx):
            plane += cells[:, :, index, channel]
    if fy == 2 and fx == 2:
        total += 2
        total >>= 2
        return total.astype(np.uint8)
    scale = np.float32(1.0) / np.float32(fy * fx)
    return np.rint(total.astype(np.float32) * scale).clip(0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _area_table(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and float32 weights [target, taps] (zero-padded), in OpenCV's order."""
    scale = source / target
    rows: list[list[tuple[int, float]]] = []
    for index in range(target):
        start = index * scale
        end = start + scale
        cell = min(scale, source - start)
        first = int(np.ceil(start))
        last = min(int(np.floor(end)), source - 1)
        first = min(first, last)
        taps = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / cell))
        taps.extend((s, 1.0 / cell) for s in range(first, last))
        if end - last > 1e-3:
            taps.append((last, min(min(end - last, 1.0), cell) / cell))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    indices = np.zeros((target, width), np.intp)
    weights = np.zeros((target, width), np.float32)
    for index, taps in enumerate(rows):
        for k, (source_index, weight) in enumerate(taps):
            indices[index, k] = source_index
            weights[index, k] = np.float32(weight)
    return indices, weights


def _shrink_area(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    height, width, _ = pixels.shape
    x_index, x_weight = _area_table(width, out_w)
    y_index, y_weight = _area_table(height, out_h)
    # Horizontal pass: every source row, each output column summed over its taps in order
    # (uint8 times float32 is exact; zero-weight padding taps add +0.0, which changes nothing).
    rows = np.take(pixels, x_index[:, 0], axis=1) * x_weight[:, 0][None, :, None]
    for k in range(1, x_index.shape[1]):
        rows += np.take(pixels, x_index[:, k], axis=1) * x_weight[:, k][None, :, None]
    # Vertical pass: OpenCV starts each output row with its first weighted row, then adds.
    result = rows[y_index[:, 0]] * y_weight[:, 0][:, None, None]
    for k in range(1, y_index.shape[1]):
        result += rows[y_index[:, k]] * y_weight[:, k][:, None, None]
    return np.rint(result).clip(0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _linear_table(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """First source index and its 11-bit fixed-point weight pair [target, 2] (area mode)."""
    inverse = target / source
    scale = 1.0 / inverse
    first = np.empty(target, np.intp)
    weights = np.empty((target, 2), np.int32)
    for index in range(target):
        start = int(np.floor(index * scale))
        fraction = np.float32((index + 1) - (start + 1) * inverse)
        fraction = np.float32(0.0) if fraction <= 0 else fraction - np.float32(np.floor(fraction))
        if start < 0:
            start, fraction = 0, np.float32(0.0)
        if start >= source - 1:
            start, fraction = source - 1, np.float32(0.0)
        first[index] = start
        weights[index] = (np.rint(np.float32(1.0 - fraction) * _COEF_SCALE),
                          np.rint(fraction * _COEF_SCALE))
    return first, weights


def _enlarge(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    height, width, _ = pixels.shape
    x_first, x_weight = _linear_table(width, out_w)
    y_first, y_weight = _linear_table(height, out_h)
    x_next = np.minimum(x_first + 1, width - 1)
    y_next = np.minimum(y_first + 1, height - 1)
    source = pixels.astype(np.int32)
    rows = (source[:, x_first] * x_weight[:, 0][None, :, None]
            + source[:, x_next] * x_weight[:, 1][None, :, None])          # int32, 2**11 scale
    # OpenCV's vectorised vertical pass: 16-bit products of (row >> 4) and the weights.
    top = ((rows[y_first] >> 4) * y_weight[:, 0][:, None, None]) >> 16
    bottom = ((rows[y_next] >> 4) * y_weight[:, 1][:, None, None]) >> 16
    return ((top + bottom + 2) >> 2).clip(0, 255).astype(np.uint8)


def decode_resized(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """:func:`decode_rgb` then :func:`area_resize` to ``size`` = (height, width) when it differs."""
    image = decode_rgb(data)
    if image.shape[:2] != tuple(size):
        image = area_resize(image, size)
    return image


# OpenCV's 8-bit colour conversions in fixed point (imgproc/src/color_hsv, color_rgb):
# the tables and shifts below reproduce cv2.COLOR_RGB2HSV and cv2.COLOR_RGB2GRAY exactly.
_HSV_SHIFT = 12
with np.errstate(divide="ignore"):
    _SDIV = np.where(np.arange(256) == 0, 0,
                     np.rint((255 << _HSV_SHIFT) / np.arange(256.0))).astype(np.int32)
    _HDIV = np.where(np.arange(256) == 0, 0,
                     np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(256.0)))).astype(np.int32)
_GREY_WEIGHTS = (9798, 19235, 3735)   # R, G, B in 1/2**15 (BT.601 luma; they sum to 2**15)


def _value_and_range(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V = max(R, G, B) and max - min, both uint8."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    return value, value - np.minimum(np.minimum(red, green), blue)


def _saturation(value: np.ndarray, diff: np.ndarray) -> np.ndarray:
    result = np.take(_SDIV, value)  # np.take: a quarter faster than indexing with an array
    result *= diff
    result += 1 << (_HSV_SHIFT - 1)
    result >>= _HSV_SHIFT
    return result


def rgb_saturation(rgb: np.ndarray) -> np.ndarray:
    """The S channel of :func:`rgb_to_hsv` alone (int32), for callers that need no hue."""
    return _saturation(*_value_and_range(rgb))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """uint8 HSV of uint8 RGB [..., 3] as ``cv2.COLOR_RGB2HSV``: hue 0-179 (degrees / 2), S, V 0-255."""
    value, diff = _value_and_range(rgb)
    saturation = _saturation(value, diff)
    red, green, blue = (rgb[..., index].astype(np.int32) for index in range(3))
    diff = diff.astype(np.int32)
    hue = np.where(value == rgb[..., 0], green - blue,
                   np.where(value == rgb[..., 1], blue - red + 2 * diff, red - green + 4 * diff))
    hue = (hue * _HDIV[diff] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    hue += (hue < 0) * 180
    result = np.empty(rgb.shape, np.uint8)
    result[..., 0], result[..., 1], result[..., 2] = hue, saturation, value
    return result


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 luma of uint8 RGB [..., 3] as ``cv2.COLOR_RGB2GRAY``."""
    channels = rgb.astype(np.int32)
    weighted = (channels[..., 0] * _GREY_WEIGHTS[0] + channels[..., 1] * _GREY_WEIGHTS[1]
                + channels[..., 2] * _GREY_WEIGHTS[2])
    return ((weighted + (1 << 14)) >> 15).astype(np.uint8)
