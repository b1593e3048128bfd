"""Deferred re-weighting (DRW, Cao et al. 2019): uniform class weights first, then from a given
epoch on the "effective number" weights (1 - beta) / (1 - beta^n_j), normalised to sum to C.

The paper trains 200 epochs and switches at 160 (80%); :func:`default_drw_epoch` keeps that ratio.

Example::

    loss = LDAMLoss(class_counts=counts)
    drw = DeferredReweighting(loss, counts, start_epoch=default_drw_epoch(epochs))
    model.fit(..., callbacks=[drw])
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np

from histoedge.training.config import ConfigError


def effective_number_weights(class_counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """(1 - beta) / (1 - beta^n_j), normalised so the weights sum to the number of classes."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"DRW beta must be in [0, 1), got {beta}")
    counts = np.maximum(np.asarray(class_counts, dtype="float64"), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return (weights / weights.sum() * len(counts)).astype("float32")


def default_drw_epoch(epochs: int, fraction: float = 0.8) -> int:
    """0-based epoch at which re-weighting starts: ``fraction`` of the run (160 of 200 in the paper)."""
    return min(max(int(math.floor(fraction * epochs)), 0), max(epochs - 1, 0))


class DeferredReweighting(keras.callbacks.Callback):
    """Switch a loss's per-class weights from uniform to effective-number weights at ``start_epoch``.

    Args:
        loss: a histoedge loss with per-class weights (``set_class_weights``).
        class_counts: training images per class.
        start_epoch: 0-based epoch from which the re-weighted loss is used.
        beta: effective-number hyper-parameter (0.9999 in the paper).
        reset: callbacks with a ``reset()`` method (e.g. the plateau scheduler) to restart when the
            loss changes, since its values before and after the switch are not comparable.
    """

    def __init__(self, loss, class_counts: Sequence[int], start_epoch: int, beta: float = 0.9999,
                 reset: Sequence[keras.callbacks.Callback] = ()):
        super().__init__()
        if getattr(loss, "class_weights", None) is None:
            raise ConfigError(f"DRW needs a loss with per-class weights; {type(loss).__name__} has none")
        self.loss = loss
        self.start_epoch = int(start_epoch)
        self.uniform = np.ones(len(class_counts), dtype="float32")
        self.reweighted = effective_number_weights(class_counts, beta)
        self.reset = list(reset)
        self.switched_at: int | None = None

    def on_train_begin(self, logs=None):
        self.loss.set_class_weights(self.uniform)
        self.switched_at = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.start_epoch and self.switched_at is None:
            self.loss.set_class_weights(self.reweighted)
            self.switched_at = epoch
            for callback in self.reset:
                callback.reset()
