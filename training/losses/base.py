"""Shared pieces of the histoedge losses: per-class weights in a variable, label smoothing.

Every loss takes ``y_true`` one-hot [N, C] and ``y_pred`` softmax probabilities [N, C].
Per-class weights live in a non-trainable ``tf.Variable`` so a callback (deferred re-weighting,
:mod:`training.callbacks.drw`) can change them between epochs without recompiling.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from histoedge.training.config import ConfigError

EPSILON = 1e-7


class ClassWeightedLoss(keras.losses.Loss):
    """Base class: optional per-class weights (indexed by the true class) and label smoothing.

    Args:
        num_classes: number of classes C; needed to hold per-class weights. When None and
            ``class_weights`` is None the loss is unweighted and cannot be re-weighted.
        class_weights: initial weights [C] (default: all ones).
        label_smoothing: epsilon; targets become y * (1 - eps) + eps / C.
    """

    def __init__(self, num_classes: int | None = None, class_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, name: str | None = None,
                 reduction: str = "sum_over_batch_size", dtype: Any = None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype="float32")
            if num_classes is not None and weights.shape != (num_classes,):
                raise ConfigError(f"class_weights has {weights.size} entries, expected {num_classes}")
            num_classes = int(weights.size)
        elif num_classes is not None:
            weights = np.ones(num_classes, dtype="float32")
        else:
            weights = None
        self.num_classes = num_classes
        self.class_weights = (None if weights is None else
                              tf.Variable(weights, trainable=False, dtype=tf.float32,
                                          name=f"{self.name}_class_weights"))

    def set_class_weights(self, weights: Sequence[float]) -> None:
        """Replace the per-class weights (takes effect at the next training step)."""
        if self.class_weights is None:
            raise ValueError(f"{type(self).__name__} was built without num_classes; "
                             "it has no class weights to set")
        self.class_weights.assign(np.asarray(weights, dtype="float32"))

    def smooth(self, y_true):
        if self.label_smoothing == 0.0:
            return y_true
        num_classes = tf.cast(tf.shape(y_true)[-1], y_true.dtype)
        return y_true * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes

    def weigh(self, y_true, per_sample):
        """Multiply each sample's loss by the weight of its true class (hard label)."""
        if self.class_weights is None:
            return per_sample
        weights = tf.cast(self.class_weights, per_sample.dtype)
        return per_sample * tf.reduce_sum(y_true * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_classes=self.num_classes, label_smoothing=self.label_smoothing,
                      class_weights=(None if self.class_weights is None
                                     else [float(w) for w in self.class_weights.numpy()]))
        return config
