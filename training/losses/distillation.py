"""Knowledge-distillation loss: a student matches a teacher's softened probabilities.

``y_true`` packs both targets side by side, ``[teacher probabilities (C) | one-hot label (C)]``
([N, 2C]), so the loss fits Keras' ``(y_true, y_pred)`` signature and one ``tf.data`` pipeline
carries both. ``y_pred`` is the student's softmax output [N, C]; its logits are recovered as
``log p`` (equal to the pre-softmax logits up to a per-row constant, which softmax ignores).

loss = alpha * T^2 * KL(softmax(log t / T) || softmax(log p / T)) + (1 - alpha) * CE(y, p)

The T^2 factor keeps the soft term's gradients on the same scale as the hard term's when the
temperature changes (Hinton et al., 2015).

Example::

    loss = DistillationLoss(temperature=2.0, alpha=0.9)
    loss(tf.concat([teacher_probs, tf.one_hot(labels, 2)], axis=-1), student_probs)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from histoedge.training.config import ConfigError
from histoedge.training.losses.base import EPSILON


def pack_targets(teacher_probs, one_hot):
    """The ``y_true`` this loss takes: ``[teacher | one-hot]`` along the last axis."""
    return tf.concat([tf.cast(teacher_probs, tf.float32), tf.cast(one_hot, tf.float32)], axis=-1)


@keras.saving.register_keras_serializable(package="histoedge")
class DistillationLoss(keras.losses.Loss):
    """Soft-target KL at a temperature mixed with hard-label cross-entropy.

    Args:
        temperature: T > 0; above 1 softens both distributions so the teacher's ranking of the
            wrong classes (and its uncertainty) carries more signal.
        alpha: weight of the soft (teacher) term in [0, 1]; 1 - alpha weighs the hard labels.
    """

    def __init__(self, temperature: float = 2.0, alpha: float = 0.9, name: str = "distillation",
                 reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        classes = tf.shape(y_pred)[-1]
        teacher, hard = y_true[..., :classes], y_true[..., classes:]
        log_p = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1.0))
        log_t = tf.math.log(tf.clip_by_value(teacher, EPSILON, 1.0))
        soft_t = tf.nn.softmax(log_t / self.temperature, axis=-1)
        log_soft_s = tf.nn.log_softmax(log_p / self.temperature, axis=-1)
        log_soft_t = tf.nn.log_softmax(log_t / self.temperature, axis=-1)
        kl = tf.reduce_sum(soft_t * (log_soft_t - log_soft_s), axis=-1)
        ce = -tf.reduce_sum(hard * log_p, axis=-1)
        return self.alpha * self.temperature ** 2 * kl + (1.0 - self.alpha) * ce

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "alpha": self.alpha}
