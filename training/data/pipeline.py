"""The tf.data input pipeline: cache, shuffle, batch, augment (training only), prefetch.

Batches are (float32 [B, S, S, 3] raw 0..255 pixels, one-hot float32 [B, C]); the
model's first layer rescales. Augmentation runs on whole batches with stateless
random ops seeded from ``seed``, so two pipelines with the same seed yield the
same batches, epoch after epoch, while each epoch gets fresh augmentations.

Example::

    from histoedge.training.data.pipeline import make_tf_dataset

    train = make_tf_dataset(x_train, y_train, 2, batch_size=32, training=True, seed=0)
    val = make_tf_dataset(x_val, y_val, 2, batch_size=64, training=False)
    model.fit(train, validation_data=val, epochs=8)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from histoedge.training.errors import DataError
from histoedge.training.data.augment import AugmentConfig, augment_batch
from histoedge.training.data.profile import resolve_augmentation


def make_tf_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                    batch_size: int, training: bool, augment: AugmentConfig | None = None,
                    seed: int = 0, rows: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Build the input pipeline for one split.

    Args:
        images: uint8 (or float) array [N, S, S, 3], RGB 0..255.
        labels: int class indices [N].
        num_classes: C, the one-hot width.
        batch_size: images per batch.
        training: shuffle every epoch and augment; False keeps order and pixels untouched.
        augment: augmentation strengths (default :class:`AugmentConfig` (), preset ``auto``:
            chosen from ``images``); only used when ``training`` is True. Pass
            ``AugmentConfig.none()`` to shuffle only.
        seed: seed of the shuffle order and of the augmentations.
        rows: ``(first, step)`` keeps rows ``first, first + step, ...`` of every batch, before
            augmentation: one replica's part of a global batch under ``tf.distribute``
            (:mod:`training.distributed`). The batches, their order and their augmentation
            seeds stay those of the whole pipeline.

    Returns:
        A ``tf.data.Dataset`` of ``(images float32 [B, S, S, 3], one-hot float32 [B, C])``.

    Raises:
        DataError: mismatched or empty inputs, or labels outside ``[0, num_classes)``.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must be [N, S, S, 3], got shape {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise DataError(f"need the same, non-zero number of images ({len(images)}) "
                        f"and labels ({len(labels)})")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if rows is not None and not 0 <= rows[0] < rows[1]:
        raise DataError(f"rows must be (first, step) with 0 <= first < step, got {rows}")
    config = resolve_augmentation(augment if augment is not None else AugmentConfig(), images) \
        if training else None

    def to_model_inputs(x, y):
        return tf.cast(x, tf.float32), tf.one_hot(y, num_classes, dtype=tf.float32)

    def part(batches):
        if rows is None:
            return batches
        first, step = rows
        return batches.map(lambda x, y: (x[first::step], y[first::step]))

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if not training:
        return (part(dataset.batch(batch_size))
                .map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))

    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    # one stateless seed pair per batch; a new sequence every epoch, fixed by `seed`
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augmented(batch, seed_pair):
        x, y = to_model_inputs(*batch)
        return augment_batch(x, config, seed_pair), y

    return (tf.data.Dataset.zip((part(dataset.batch(batch_size)), seeds))
            .map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))
