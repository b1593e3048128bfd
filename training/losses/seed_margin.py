"""The seed project's "LDAM" loss, kept under an honest name for reproduction runs.

The seed computed ``-(y * log(p) * (1 + m) + (1 - y) * log(1 - p))`` with m = 0.4 on a sigmoid
output: a cross-entropy that up-weights the positive class by 1 + m. It has no margins and no
dependence on class counts, so it is not LDAM (see :mod:`training.losses.ldam` for the real one).
With a softmax output, p = P(positive class) and 1 - p = the other classes' probability.

Example::

    loss = SeedMarginBCE(m=0.4, positive_class=1)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from histoedge.training.losses.base import EPSILON, ClassWeightedLoss


@keras.saving.register_keras_serializable(package="histoedge")
class SeedMarginBCE(ClassWeightedLoss):
    """-(1 + m) * y_pos * log p_pos - sum_{c != pos} y_c * log p_c.

    Args:
        m: extra weight on the positive class's term (0.4 in the seed).
        positive_class: column of the positive class (1 = malignant).
        num_classes, class_weights, label_smoothing: see :class:`ClassWeightedLoss`.
    """

    def __init__(self, m=0.4, positive_class=1, num_classes=None, class_weights=None,
                 label_smoothing=0.0, name="seed_margin_bce", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(num_classes=num_classes, class_weights=class_weights,
                         label_smoothing=label_smoothing, name=name, reduction=reduction,
                         dtype=dtype)
        self.m = float(m)
        self.positive_class = int(positive_class)

    def call(self, y_true, y_pred):
        log_p = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1.0))
        boost = 1.0 + self.m * tf.one_hot(self.positive_class, tf.shape(y_pred)[-1], dtype=log_p.dtype)
        per_sample = -tf.reduce_sum(self.smooth(y_true) * log_p * boost, axis=-1)
        return self.weigh(y_true, per_sample)

    def get_config(self):
        config = super().get_config()
        config.update(m=self.m, positive_class=self.positive_class)
        return config
