"""Focal loss (Lin et al. 2017) for softmax outputs.

FL = -sum_c alpha_c * y_c * (1 - p_c)^gamma * log(p_c). ``alpha`` is one number for every class
(Keras' CategoricalFocalCrossentropy convention; the seed tried 0.25) or a per-class list.
The focusing term uses the model's probability of each class, so label smoothing spreads the
target but not the focusing.

Example::

    loss = FocalLoss(alpha=0.25, gamma=2.0)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from histoedge.training.config import ConfigError
from histoedge.training.losses.base import EPSILON, ClassWeightedLoss


@keras.saving.register_keras_serializable(package="histoedge")
class FocalLoss(ClassWeightedLoss):
    """Categorical focal loss.

    Args:
        alpha: balance factor, a float or a list with one entry per class.
        gamma: focusing parameter (0 gives alpha-weighted cross-entropy).
        num_classes, class_weights, label_smoothing: see :class:`ClassWeightedLoss`.
    """

    def __init__(self, alpha=0.25, gamma=2.0, num_classes=None, class_weights=None,
                 label_smoothing=0.0, name="focal", reduction="sum_over_batch_size", dtype=None):
        super().__init__(num_classes=num_classes, class_weights=class_weights,
                         label_smoothing=label_smoothing, name=name, reduction=reduction,
                         dtype=dtype)
        if gamma < 0:
            raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
        if isinstance(alpha, (list, tuple)):
            if self.num_classes is not None and len(alpha) != self.num_classes:
                raise ConfigError(f"focal alpha has {len(alpha)} entries, expected {self.num_classes}")
            self.alpha = [float(a) for a in alpha]
        else:
            self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        p = tf.clip_by_value(y_pred, EPSILON, 1.0)
        alpha = tf.constant(self.alpha, dtype=p.dtype)
        focal = alpha * tf.pow(1.0 - p, self.gamma) * -tf.math.log(p)
        per_sample = tf.reduce_sum(self.smooth(y_true) * focal, axis=-1)
        return self.weigh(y_true, per_sample)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, gamma=self.gamma)
        return config
