"""Class-imbalance strategies, applied to the TRAINING split only.

- ``class_weight``: balanced weights n / (C * n_j), as ``sklearn.utils.class_weight`` computes.
- ``oversample``: grow every class to the majority's size, either by SMOTE on flattened pixel
  vectors (the seed's method: synthetic images are pixel blends of two same-class neighbours) or by
  random duplication. SMOTE holds N x S*S*3 float32 values in memory (about 0.9 GB for 9,000
  images at 96 px, but 5.4 GB at 224 px): use ``random`` or a smaller image size for big inputs.

Validation and test images must never go through these functions; :func:`apply_imbalance` takes
only the training arrays and returns new ones.

Example::

    images, labels, class_weight = apply_imbalance("oversample", x_train, y_train, 2,
                                                   method="smote", seed=0)
"""

from __future__ import annotations

import logging

import numpy as np

from histoedge.training.config import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("none", "class_weight", "oversample")
OVERSAMPLE_METHODS = ("smote", "random")


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, length ``num_classes``."""
    return np.bincount(np.asarray(labels, dtype="int64"), minlength=num_classes)[:num_classes]


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (C_present * n_j)`` for every class present (sklearn's "balanced"); absent classes get 1."""
    counts = class_counts(labels, num_classes)
    present = counts > 0
    total, n_present = counts.sum(), int(present.sum())
    return {c: float(total / (n_present * counts[c])) if present[c] else 1.0
            for c in range(num_classes)}


def random_oversample(images: np.ndarray, labels: np.ndarray, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate randomly chosen images of every minority class up to the majority count."""
    from imblearn.over_sampling import RandomOverSampler

    # Resample indices rather than pixels: no copy of the images until the final gather.
    index = np.arange(len(labels)).reshape(-1, 1)
    sampled, new_labels = RandomOverSampler(random_state=seed).fit_resample(index, labels)
    return images[sampled[:, 0]], np.asarray(new_labels, dtype=labels.dtype)


def smote_oversample(images: np.ndarray, labels: np.ndarray, seed: int = 0, k_neighbors: int = 5
                     ) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE on flattened pixel vectors; synthetic images are rounded back to uint8.

    ``k_neighbors`` shrinks to fit the smallest class; a class with a single image cannot be
    interpolated, so then random oversampling is used instead (with a warning).
    """
    from imblearn.over_sampling import SMOTE

    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        log.warning("a class has a single training image: SMOTE impossible, oversampling randomly")
        return random_oversample(images, labels, seed)
    shape = images.shape[1:]
    needed = 4 * images[0].size * max(len(labels), counts.max() * len(counts)) * 2
    if needed > 4e9:
        log.warning("SMOTE on %d images of %s needs about %.1f GB; consider "
                    "oversample_method: random or a smaller image size", len(labels), shape, needed / 1e9)
    flat = images.reshape(len(images), -1).astype("float32")
    sampler = SMOTE(k_neighbors=min(k_neighbors, smallest - 1), random_state=seed)
    resampled, new_labels = sampler.fit_resample(flat, labels)
    out = np.clip(np.rint(resampled), 0, 255).astype(images.dtype).reshape((-1, *shape))
    return out, np.asarray(new_labels, dtype=labels.dtype)


def apply_imbalance(strategy: str, images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                    method: str = "smote", seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, dict[int, float] | None]:
    """Apply a strategy to training data.

    Args:
        strategy: "none", "class_weight" or "oversample".
        images: uint8 [N, S, S, 3] training images; labels: int [N].
        num_classes: C.
        method: oversampling method, "smote" or "random".
        seed: random seed for the sampler.

    Returns:
        (images, labels, class_weight) where class_weight is a dict for ``model.fit`` or None.
    """
    labels = np.asarray(labels)
    if strategy == "none":
        return images, labels, None
    if strategy == "class_weight":
        return images, labels, balanced_class_weights(labels, num_classes)
    if strategy == "oversample":
        if len(np.unique(labels)) < 2:
            return images, labels, None
        if method == "smote":
            new_images, new_labels = smote_oversample(images, labels, seed)
        elif method == "random":
            new_images, new_labels = random_oversample(images, labels, seed)
        else:
            raise ConfigError(f"oversample_method must be one of {', '.join(OVERSAMPLE_METHODS)}, "
                              f"got {method!r}")
        log.info("oversampled training split (%s): %d -> %d images", method, len(labels),
                 len(new_labels))
        return new_images, new_labels, None
    raise ConfigError(f"imbalance must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
