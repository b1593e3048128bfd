"""Categorical cross-entropy on probabilities, with label smoothing and per-class weights.

Example::

    loss = CrossEntropy(num_classes=2, label_smoothing=0.1)
    loss(tf.one_hot([0, 1], 2), tf.constant([[0.9, 0.1], [0.2, 0.8]]))
"""

from __future__ import annotations

import keras
import tensorflow as tf

from histoedge.training.losses.base import EPSILON, ClassWeightedLoss


@keras.saving.register_keras_serializable(package="histoedge")
class CrossEntropy(ClassWeightedLoss):
    """-sum_c y_c log p_c, optionally times the true class's weight.

    Args:
        num_classes, class_weights, label_smoothing: see :class:`ClassWeightedLoss`.
    """

    def __init__(self, num_classes=None, class_weights=None, label_smoothing=0.0,
                 name="crossentropy", reduction="sum_over_batch_size", dtype=None):
        super().__init__(num_classes=num_classes, class_weights=class_weights,
                         label_smoothing=label_smoothing, name=name, reduction=reduction,
                         dtype=dtype)

    def call(self, y_true, y_pred):
        log_p = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1.0))
        per_sample = -tf.reduce_sum(self.smooth(y_true) * log_p, axis=-1)
        return self.weigh(y_true, per_sample)
