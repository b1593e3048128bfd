"""LDAM: label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

For class counts n_j the margin is m_j = K / n_j^(1/4), with K chosen so the largest margin is
``max_margin``. The true class's logit z_y is lowered by m_y, everything is multiplied by the
scale s, and the result goes through (per-class weighted) softmax cross-entropy:

    loss = -w_y * log( exp(s (z_y - m_y)) / (exp(s (z_y - m_y)) + sum_{j != y} exp(s z_j)) )

The model outputs probabilities, so the logits are z = log(clip(p)); softmax is shift-invariant,
so these equal the network's pre-softmax logits up to a per-sample constant and the loss is exact
(apart from the clip at 1e-7).

Scale: the paper uses s = 30 because its logits are cosine similarities bounded in [-1, 1],
which could otherwise never make a confident softmax. Our logits are unbounded, so s is only a
temperature: training fits softmax(s z) = p^s / sum p^s to the labels, and the probabilities the
model exports (p itself) become the s-th root of a calibrated distribution, i.e. much flatter than
those of the cross-entropy members they are stacked and thresholded with. With s = 1 the loss is
exactly cross-entropy when the margins are zero, the margin is in the same nats as the logits
(m = 0.5 asks the rare class's log-probability to win by 0.5), and the outputs stay on the
cross-entropy scale. The default is therefore s = 1 (configurable as ``scale``).

Example::

    loss = LDAMLoss(class_counts=[100, 10])   # margins [0.281, 0.5]
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from histoedge.training.config import ConfigError
from histoedge.training.losses.base import EPSILON, ClassWeightedLoss


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> np.ndarray:
    """Per-class margins proportional to n_j^(-1/4), scaled so the largest is ``max_margin``.

    Empty classes are counted as one image (largest margin) rather than dividing by zero.
    """
    counts = np.maximum(np.asarray(class_counts, dtype="float64"), 1.0)
    margins = counts ** -0.25
    return (margins * (max_margin / margins.max())).astype("float32")


@keras.saving.register_keras_serializable(package="histoedge")
class LDAMLoss(ClassWeightedLoss):
    """The LDAM loss; pair it with deferred re-weighting (:class:`training.callbacks.drw.DeferredReweighting`).

    Args:
        class_counts: training images per class (sets C and the margins).
        max_margin: the largest margin (the rarest class's), 0.5 in the paper.
        scale: s, multiplies the margin-adjusted logits (see the module docstring for why 1).
        class_weights: initial per-class weights (default uniform; DRW changes them later).
        label_smoothing: smooths the cross-entropy targets; the margin uses the hard label.

    The batch loss is the mean of w_y * loss (Keras' convention); PyTorch's weighted
    ``cross_entropy``, used in the paper's code, divides by the sum of the weights instead. With
    the DRW weights normalised to sum to C the two differ only by a per-batch factor near 1.
    """

    needs_class_counts = True

    def __init__(self, class_counts, max_margin=0.5, scale=1.0, class_weights=None,
                 label_smoothing=0.0, num_classes=None, name="ldam",
                 reduction="sum_over_batch_size", dtype=None):
        if class_counts is None or len(class_counts) < 2:
            raise ConfigError("LDAM needs the training images per class (class_counts, >= 2 classes)")
        if num_classes is not None and num_classes != len(class_counts):
            raise ConfigError(f"LDAM class_counts has {len(class_counts)} entries, expected {num_classes}")
        if max_margin <= 0 or scale <= 0:
            raise ConfigError(f"LDAM max_margin and scale must be > 0, got {max_margin}, {scale}")
        super().__init__(num_classes=len(class_counts), class_weights=class_weights,
                         label_smoothing=label_smoothing, name=name, reduction=reduction,
                         dtype=dtype)
        self.class_counts = [int(n) for n in class_counts]
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.margins = ldam_margins(self.class_counts, self.max_margin)

    def call(self, y_true, y_pred):
        logits = tf.math.log(tf.clip_by_value(y_pred, EPSILON, 1.0))
        margins = tf.constant(self.margins, dtype=logits.dtype)
        adjusted = self.scale * (logits - y_true * margins)
        per_sample = -tf.reduce_sum(self.smooth(y_true) * tf.nn.log_softmax(adjusted, axis=-1), axis=-1)
        return self.weigh(y_true, per_sample)

    def get_config(self):
        config = super().get_config()
        config.update(class_counts=self.class_counts, max_margin=self.max_margin, scale=self.scale)
        return config
