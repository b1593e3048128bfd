"""The numpy features equal the OpenCV implementation they replaced (profiles stay valid).

The reference below is the former OpenCV code, kept here (tests have OpenCV; the serve
image does not).  Measured: brightness, saturation, focus and tissue fraction agree to
1e-12 relative; the two stain amounts to 2e-5 absolute (a float32 BLAS sum instead of
OpenCV's float64 mean), far below what the drift statistics resolve.
"""

import cv2
import numpy as np
import pytest

from histoedge.serving.monitoring.features import (_HED_FROM_RGB, _OD, FEATURES, TISSUE_OD,
                                                   image_features)
from tests.serving.monitoring.images import blur, he_tiles, stain_shift

_OD_LUT = np.repeat(_OD[None, :, None], 3, axis=2)


def _opencv_features(images: np.ndarray) -> np.ndarray:
    rows = []
    for image in images:
        scale = max(image.shape[:2]) / 112
        if scale > 1:
            size = (max(1, round(image.shape[1] / scale)), max(1, round(image.shape[0] / scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        od = cv2.LUT(image, _OD_LUT)
        _, tissue = cv2.threshold(cv2.transform(od, np.ones((1, 3), np.float32)), TISSUE_OD, 1,
                                  cv2.THRESH_BINARY)
        tissue = tissue.astype(np.uint8)
        count = cv2.countNonZero(tissue)
        stains = np.dot(cv2.mean(od, mask=tissue if count else None)[:3], _HED_FROM_RGB)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        _, deviation = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F, ksize=1))
        rows.append((stains[0], stains[1], cv2.mean(grey)[0] / 255.0,
                     cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))[1] / 255.0,
                     float(deviation[0, 0]) ** 2, count / tissue.size))
    return np.array(rows)


@pytest.fixture(scope="module")
def batches():
    tiles, _ = he_tiles(12, 64, seed=5)
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (6, 150, 230, 3), dtype=np.uint8)
    white = np.full((2, 40, 40, 3), 250, np.uint8)                  # no tissue at all
    return {"he": tiles, "stain shift": stain_shift(tiles), "blur": blur(tiles),
            "noise 150x230": noise, "white": white, "one pixel": noise[:, :1, :1]}


@pytest.mark.parametrize("name", ["he", "stain shift", "blur", "noise 150x230", "white", "one pixel"])
def test_features_equal_the_opencv_implementation(batches, name):
    images = batches[name]
    expected, got = _opencv_features(images), image_features(images)
    stains = [FEATURES.index("od_hematoxylin"), FEATURES.index("od_eosin")]
    exact = [i for i in range(len(FEATURES)) if i not in stains]
    np.testing.assert_allclose(got[:, exact], expected[:, exact], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[:, stains], expected[:, stains], rtol=0, atol=2e-5)


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (2, 2), (3, 7), (112, 112), (57, 112)])
def test_the_laplacian_and_its_mirrored_border_equal_opencv_at_every_size(shape):
    from histoedge.serving.monitoring.features import _laplacian

    grey = np.random.default_rng(sum(shape)).integers(0, 256, (2, *shape), dtype=np.uint8)
    for image, ours in zip(grey, _laplacian(grey)):
        expected = cv2.Laplacian(image, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_array_equal(ours, expected)
