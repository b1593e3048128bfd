"""histoedge.imaging against OpenCV: the served pixels equal the pixels training used.

Measured here (seeded; the same figures are in bench/results/image_size.md): over 400
random images and sizes (whole-factor and fractional shrinking, enlarging, mixed axes,
1/3/4 channels and grey) the resize differs from ``cv2.INTER_AREA`` in 0 pixels, and
Pillow's decode equals ``cv2.imdecode`` exactly for every PNG, JPEG, TIFF and BMP variant
below, so models trained with the OpenCV pipeline stay valid.
"""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from histoedge.imaging import (ImageDecodeError, area_resize, decode_resized, decode_rgb, rgb_saturation,
                               rgb_to_grey, rgb_to_hsv)


def _sizes(rng, trial):
    kind = trial % 4
    if kind == 0:                                           # whole factors (OpenCV's fast path)
        out = rng.integers(1, 40, 2)
        return tuple(out * rng.integers(1, 6, 2)), tuple(out)
    source = tuple(rng.integers(1, 260, 2))
    if kind == 1:                                           # fractional shrink
        return source, (rng.integers(1, source[0] + 1), rng.integers(1, source[1] + 1))
    if kind == 2:                                           # enlarge
        return source, (rng.integers(source[0], 2 * source[0] + 40),
                        rng.integers(source[1], 2 * source[1] + 40))
    return source, tuple(rng.integers(1, 300, 2))           # anything, mixed axes included


def test_area_resize_equals_opencv_inter_area_to_the_pixel():
    rng = np.random.default_rng(19)
    differing = total = 0
    for trial in range(400):
        (height, width), (out_h, out_w) = _sizes(rng, trial)
        channels = (None, 1, 3, 4)[trial % 4] if trial % 5 else 3
        shape = (height, width) if channels is None else (height, width, channels)
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        if trial % 2:                                       # smooth images hit other roundings
            image = cv2.GaussianBlur(image, (0, 0), 2).reshape(shape)
        expected = cv2.resize(image, (int(out_w), int(out_h)), interpolation=cv2.INTER_AREA)
        if channels == 1:
            expected = expected[..., None]
        got = area_resize(image, (out_h, out_w))
        assert got.shape == expected.shape and got.dtype == np.uint8
        differing += int(np.count_nonzero(got != expected))
        total += got.size
    assert total > 1_000_000
    assert differing == 0, f"{differing} of {total} values differ from cv2.INTER_AREA"


@pytest.mark.parametrize("source, target", [((1000, 700), (224, 224)), ((448, 448), (224, 224)),
                                            ((50, 70), (224, 224)), ((300, 90), (64, 64))])
def test_typical_model_sizes_match_opencv(source, target):
    rng = np.random.default_rng(7)
    image = cv2.GaussianBlur(rng.integers(0, 256, (*source, 3), dtype=np.uint8), (0, 0), 1.5)
    expected = cv2.resize(image, target[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(area_resize(image, target), expected)


def test_area_resize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        area_resize(np.zeros((4, 4, 3), np.float32), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        area_resize(np.zeros((4, 4, 3), np.uint8), (0, 2))


def _encoded():
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), (0, 0), 1.5)

    def pillow(array, fmt, **options):
        buffer = io.BytesIO()
        (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buffer, fmt, **options)
        return buffer.getvalue()

    cases = {
        "png rgb": cv2.imencode(".png", image)[1].tobytes(),
        "png rgba": pillow(np.dstack([image, image[..., 0]]), "PNG"),
        "png grey": pillow(image[..., 0], "PNG"),
        "png grey alpha": pillow(np.dstack([image[..., 0], image[..., 1]]), "PNG"),
        "png palette": pillow(Image.fromarray(image).quantize(64), "PNG"),
        "png 16-bit rgb": cv2.imencode(".png", image.astype(np.uint16) * 257 + 3)[1].tobytes(),
        "png 16-bit grey": cv2.imencode(".png", image[..., 0].astype(np.uint16) * 257 + 100)[1].tobytes(),
        "jpeg opencv": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
        "jpeg 4:2:0": pillow(image, "JPEG", quality=80),
        "jpeg 4:4:4": pillow(image, "JPEG", quality=95, subsampling=0),
        "jpeg progressive": pillow(image, "JPEG", quality=85, progressive=True),
        "jpeg grey": pillow(image[..., 0], "JPEG"),
        "tiff": cv2.imencode(".tiff", image)[1].tobytes(),
        "bmp": cv2.imencode(".bmp", image)[1].tobytes(),
    }
    for orientation in (3, 6, 8):                          # OpenCV applies EXIF orientation
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases[f"jpeg exif orientation {orientation}"] = pillow(image, "JPEG", quality=90, exif=exif.tobytes())
    return cases


@pytest.mark.parametrize("name, data", list(_encoded().items()))
def test_decode_equals_opencv_imdecode(name, data):
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    got = decode_rgb(data)
    assert got.flags.writeable and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected, err_msg=name)
    np.testing.assert_array_equal(
        decode_resized(data, (32, 40)),
        cv2.resize(np.ascontiguousarray(expected), (40, 32), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"not an image at all", "unrecognised"),
                                           (None, "truncated")])
def test_decode_errors_are_value_errors(data, message):
    if data is None:
        data = _encoded()["png rgb"][:200]
    with pytest.raises(ImageDecodeError, match=message):
        decode_rgb(data)
    assert issubclass(ImageDecodeError, ValueError)


def test_colour_conversions_equal_opencv():
    # every (R, G) pair with 16 blue levels, plus a million random colours (all 16.7 million
    # agree too; that check takes seconds)
    levels = np.arange(256)
    red, green, blue = np.meshgrid(levels, levels, np.arange(0, 256, 17), indexing="ij")
    grid = np.stack([red, green, blue], -1).astype(np.uint8).reshape(1024, -1, 3)
    random = np.random.default_rng(11).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    for colours in (grid, random):
        hsv = cv2.cvtColor(colours, cv2.COLOR_RGB2HSV)
        np.testing.assert_array_equal(rgb_to_hsv(colours), hsv)
        np.testing.assert_array_equal(rgb_saturation(colours), hsv[..., 1])
        np.testing.assert_array_equal(rgb_to_grey(colours), cv2.cvtColor(colours, cv2.COLOR_RGB2GRAY))
