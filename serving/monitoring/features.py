"""Per-image features of H&E tiles: stain, colour, focus and tissue (one implementation).

The export builds the reference profile with :func:`image_features` from the training and
validation images, and the server calls the same function on every decoded image, so the
two can be compared.  Everything is vectorised over the batch and runs on a copy of at most
:data:`MAX_SIDE` pixels a side (area-downsampled), which keeps it a small fraction of
inference (``bench/bench_monitoring.py`` measures it).

Features (one column each, in :data:`FEATURES` order):

* ``od_hematoxylin``, ``od_eosin``: mean stain amount of the tissue pixels from colour
  deconvolution (Ruifrok and Johnston's H&E-DAB matrix, natural-log optical density);
* ``brightness``: mean grey level in 0..1;
* ``saturation``: mean HSV saturation ``(max - min) / max`` in 0..1;
* ``focus``: variance of the 4-neighbour Laplacian of the grey image (0..255 levels);
  low means blurred;
* ``tissue_fraction``: share of pixels whose optical density (summed over R, G, B) is above
  :data:`TISSUE_OD`; the rest is background (glass, white).

Example::

    values = image_features(batch)            # float64 [N, len(FEATURES)]
    dict(zip(FEATURES, values[0]))
"""

from __future__ import annotations

import cv2
import numpy as np

FEATURES = ("od_hematoxylin", "od_eosin", "brightness", "saturation", "focus", "tissue_fraction")
MAX_SIDE = 112
TISSUE_OD = 0.3

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) as in scikit-image.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# Optical density of each 8-bit level: a table lookup instead of a log per pixel.
_OD = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
_OD_LUT = np.repeat(_OD[None, :, None], 3, axis=2)              # [1, 256, 3] for cv2.LUT
_ONES = np.ones((1, 3), dtype=np.float32)                         # sums R, G, B in cv2.transform


def downsample(images: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """uint8 [N, H, W, 3] with the longer side at most ``max_side`` (area interpolation)."""
    height, width = images.shape[1:3]
    scale = max(height, width) / max_side
    if scale <= 1:
        return images
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return np.stack([cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images])


def image_features(images: np.ndarray) -> np.ndarray:
    """Features of RGB uint8 images [N, H, W, 3] as float64 [N, len(FEATURES)]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    result = np.empty((len(images), len(FEATURES)))
    for row, image in zip(result, downsample(images)):
        row[:] = _features(np.ascontiguousarray(image))
    return result


def _features(image: np.ndarray) -> tuple[float, ...]:
    # OpenCV per image: numpy reductions over the 3-channel axis cost several times more.
    od = cv2.LUT(image, _OD_LUT)                                   # float32 [H, W, 3]
    _, tissue = cv2.threshold(cv2.transform(od, _ONES), TISSUE_OD, 1, cv2.THRESH_BINARY)
    tissue = tissue.astype(np.uint8)
    count = cv2.countNonZero(tissue)
    share = count / tissue.size
    mean_od = cv2.mean(od, mask=tissue if count else None)[:3]
    stains = np.dot(mean_od, _HED_FROM_RGB)                        # deconvolution is linear
    saturation = cv2.mean(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))[1] / 255.0
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, deviation = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F, ksize=1))
    return (float(stains[0]), float(stains[1]), cv2.mean(grey)[0] / 255.0, saturation,
            float(deviation[0, 0]) ** 2, share)
