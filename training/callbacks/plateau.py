"""Reduce the learning rate on a plateau by scaling a :class:`training.schedules.ScaledSchedule`.

Keras' ReduceLROnPlateau cannot change an optimizer whose rate is a schedule; this one multiplies
the schedule's ``scale`` variable instead, so decay schedules and plateau reduction compose.

Example::

    schedule = build_schedule(config.optimizer, steps, epochs)
    callback = ReduceLROnPlateau(schedule, factor=0.5, patience=3)
"""

from __future__ import annotations

import keras
import numpy as np


class ReduceLROnPlateau(keras.callbacks.Callback):
    """Multiply the schedule's scale by ``factor`` after ``patience`` epochs without improvement.

    Args:
        schedule: the optimizer's :class:`ScaledSchedule`.
        monitor: log key to watch (lower is better unless its name contains "acc" or "auc").
        factor: multiplier in (0, 1).
        patience: epochs without improvement before reducing.
        min_lr: never reduce the current learning rate below this.
        min_delta: smallest change counted as an improvement.
        gate: an object with ``reached(epoch)`` (:class:`training.callbacks.onset.LearningOnset`);
            epochs before it are ignored. None: every epoch counts.
    """

    def __init__(self, schedule, monitor: str = "val_loss", factor: float = 0.5, patience: int = 3,
                 min_lr: float = 1e-6, min_delta: float = 1e-4, verbose: int = 0, gate=None):
        super().__init__()
        self.gate = gate
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.schedule = schedule
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.min_lr = min_lr
        self.min_delta = min_delta
        self.verbose = verbose
        self.maximise = "acc" in monitor or "auc" in monitor
        self.reset()

    def reset(self) -> None:
        """Forget the best value seen so far (e.g. after the loss itself changed)."""
        self.best = -np.inf if self.maximise else np.inf
        self.wait = 0

    def _improved(self, value: float) -> bool:
        if self.maximise:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or (self.gate is not None and not self.gate.reached(epoch)):
            return
        if self._improved(float(value)):
            self.best = float(value)
            self.wait = 0
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        self.wait = 0
        current = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if current * self.factor < self.min_lr:
            return
        self.schedule.scale.assign(self.schedule.scale * self.factor)
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate scaled by {self.factor} "
                  f"(now {current * self.factor:.3g})")
