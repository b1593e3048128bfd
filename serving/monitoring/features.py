"""Per-image features of H&E tiles: stain, colour, focus and tissue (one implementation).

The export builds the reference profile with :func:`image_features` from the training and
validation images, and the server calls the same function on every decoded image, so the
two can be compared.  Everything is vectorised over the batch with numpy (the serve image
has no OpenCV) and runs on a copy of at most :data:`MAX_SIDE` pixels a side
(area-downsampled), which keeps it a small fraction of inference
(``bench/bench_monitoring.py`` measures it).  The colour conversions and the resize are
OpenCV's arithmetic (:mod:`histoedge.imaging`), so profiles exported before stay
comparable (``tests/serving/monitoring/test_features_opencv.py``).

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

import numpy as np

from histoedge.imaging import area_resize, rgb_saturation, rgb_to_grey

FEATURES = ("od_hematoxylin", "od_eosin", "brightness", "saturation", "focus", "tissue_fraction")
MAX_SIDE = 112
CHUNK_PIXELS = 1 << 16
TISSUE_OD = 0.3

# Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB) as in scikit-image.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
# Optical density of each 8-bit level: a table lookup instead of a log per pixel.
_OD = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _small_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) of the copy the features are computed on."""
    scale = max(height, width) / max_side
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def downsample(images: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """uint8 [N, H, W, 3] with the longer side at most ``max_side`` (area interpolation)."""
    height, width = images.shape[1:3]
    size = _small_size(height, width, max_side)
    if size == (height, width):
        return images
    if height % size[0] == 0 and width % size[1] == 0 and len(images):
        # whole factors: blocks never straddle two images, so the batch shrinks as one tall image
        tall = area_resize(images.reshape(-1, width, images.shape[3]), (len(images) * size[0], size[1]))
        return tall.reshape(len(images), *size, images.shape[3])
    return np.stack([area_resize(image, size) for image in images])


def image_features(images: np.ndarray) -> np.ndarray:
    """Features of RGB uint8 images [N, H, W, 3] as float64 [N, len(FEATURES)]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    # Vectorised over the batch, but in chunks of about CHUNK_PIXELS pixels of the downsampled
    # copy (where the float temporaries live), so they stay in cache.  Measured on one core
    # right after a model run: 5 images of 224 px at a time cost 0.44 ms an image, one at a
    # time 0.58 ms; 16 images of 64 px at a time 0.09 ms an image.
    height, width = _small_size(*images.shape[1:3])
    per_chunk = max(1, CHUNK_PIXELS // max(1, height * width))
    if len(images) > per_chunk:
        return np.concatenate([_features(images[i:i + per_chunk]) for i in range(0, len(images), per_chunk)])
    return _features(images)


def _features(images: np.ndarray) -> np.ndarray:
    result = np.empty((len(images), len(FEATURES)))
    if len(images) == 0:
        return result
    small = downsample(images)
    pixels = small.shape[1] * small.shape[2]
    od = np.take(_OD, small)                                       # float32 [N, h, w, 3]
    tissue = (od[..., 0] + od[..., 1] + od[..., 2]) > TISSUE_OD    # summed in float32
    count = tissue.sum(axis=(1, 2))
    mean_od = _mean_od(od, tissue, count)
    # Deconvolution is linear: three products summed in a fixed order.  A BLAS product may sum
    # them in another order for one row than for many, and an image's features must not depend
    # on the batch it came in (seen with numpy 2.4.6's OpenBLAS: 1-ulp differences).
    stains = mean_od[:, :1] * _HED_FROM_RGB[0] + mean_od[:, 1:2] * _HED_FROM_RGB[1] + mean_od[:, 2:] * _HED_FROM_RGB[2]
    result[:, 0], result[:, 1] = stains[:, 0], stains[:, 1]
    grey = rgb_to_grey(small)
    result[:, 2] = grey.mean(axis=(1, 2)) / 255.0
    result[:, 3] = rgb_saturation(small).mean(axis=(1, 2)) / 255.0
    result[:, 4] = _laplacian(grey).reshape(len(small), -1).var(axis=1)
    result[:, 5] = count / pixels
    return result


def _mean_od(od: np.ndarray, tissue: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Mean optical density per channel [N, 3] of the tissue pixels (all pixels if none).

    One batched float32 matrix product (BLAS) instead of a masked mean over copies.
    """
    keep = np.where(count[:, None, None] > 0, tissue, True).reshape(len(od), 1, -1)
    total = np.matmul(keep.astype(np.float32), od.reshape(len(od), -1, 3))[:, 0]
    return total.astype(np.float64) / keep.sum(axis=2)


def _laplacian(grey: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian of uint8 [N, h, w] (OpenCV's ksize=1 kernel, mirrored border)."""
    count, height, width = grey.shape
    if height < 2 or width < 2:  # too small to mirror: numpy's rule for one row or column
        padded = np.pad(grey.astype(np.int16), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    else:  # np.pad's "reflect" by hand (OpenCV's BORDER_REFLECT_101), 5x cheaper at 112 px
        padded = np.empty((count, height + 2, width + 2), np.int16)
        padded[:, 1:-1, 1:-1] = grey
        padded[:, 0, 1:-1], padded[:, -1, 1:-1] = grey[:, 1], grey[:, -2]
        padded[:, :, 0], padded[:, :, -1] = padded[:, :, 2], padded[:, :, -3]
    return (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
            - 4 * padded[:, 1:-1, 1:-1]).astype(np.float64)
