"""Hold early stopping and plateau reduction back until the model has begun to learn.

A CNN trained from scratch can sit on the trivial solution (one probability for every image) for
several epochs before it starts to separate the classes; how long varies with the seed. On that
plateau the validation loss is flat, so early stopping counts those epochs as "no improvement",
ends the training and restores an early, chance-level model, and plateau reduction halves the
learning rate the model needs to move off the plateau. Seen with the ``class_weight`` recipe: 3
of 15 cross-fitting folds were stopped that way (held-out ROC-AUC 0.58-0.79 against 0.92-0.97 for
the same recipe's other trainings). Some starts never leave it (every ReLU of a layer silent for
every image): with ``abort`` the onset callback ends such an attempt at ``max_wait`` so the trainer
can start again from other initial weights.

:class:`LearningOnset` marks the first epoch at which validation ROC-AUC (the compiled ``auc``
metric, macro over classes) reaches ``min_auc``, or the epoch ``max_wait`` when it never does;
:class:`GatedEarlyStopping` and the plateau callback ignore the epochs before it. Put the onset
callback before the ones it gates, so each epoch's decision is made before they look.

Example::

    onset = LearningOnset(min_auc=0.75, max_wait=10)
    stop = GatedEarlyStopping(onset, monitor="val_loss", patience=8, restore_best_weights=True)
    model.fit(..., callbacks=[onset, stop])
"""

from __future__ import annotations

import logging

import keras

log = logging.getLogger(__name__)

MONITOR = "val_auc"


class LearningOnset(keras.callbacks.Callback):
    """Record the epoch from which the model counts as learning.

    Args:
        min_auc: validation ROC-AUC that marks the onset, in (0.5, 1].
        max_wait: epochs after which the onset is assumed anyway (0: from the first epoch), so a
            model that never gets there still stops early and keeps its best weights.
        name: what is training, for the log line.
        abort: at ``max_wait`` without the onset, stop the training instead (``aborted`` is then
            True), so the caller can start again from new weights.
    """

    def __init__(self, min_auc: float = 0.75, max_wait: int = 10, name: str = "model", abort: bool = False):
        super().__init__()
        if not 0.5 < min_auc <= 1.0:
            raise ValueError(f"min_auc must be in (0.5, 1], got {min_auc}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.min_auc = float(min_auc)
        self.max_wait = int(max_wait)
        self.name = name
        self.abort = abort
        self.epoch: int | None = None   # 0-based onset epoch, None until reached
        self.reason = ""
        self.learned = False            # the onset came from validation ROC-AUC, not from max_wait
        self.aborted = False

    def on_epoch_end(self, epoch, logs=None):
        if self.epoch is not None:
            return
        auc = (logs or {}).get(MONITOR)
        if auc is None:
            self.epoch, self.reason = epoch, f"no {MONITOR} logged"
        elif float(auc) >= self.min_auc:
            self.epoch, self.reason, self.learned = epoch, f"validation ROC-AUC {float(auc):.3f}", True
        elif epoch + 1 >= self.max_wait and self.abort:
            self.aborted = True
            self.model.stop_training = True
            log.warning("%s: validation ROC-AUC is %.3f after %d epochs (onset at %.2f); starting "
                        "again from new weights", self.name, float(auc), epoch + 1, self.min_auc)
            return
        elif epoch + 1 >= self.max_wait:
            self.epoch = epoch
            self.reason = f"validation ROC-AUC still {float(auc):.3f} after {epoch + 1} epochs"
            log.warning("%s: validation ROC-AUC is %.3f after %d epochs (onset at %.2f); early "
                        "stopping starts counting anyway, but the model may not have learned",
                        self.name, float(auc), epoch + 1, self.min_auc)
            return
        else:
            return
        log.info("%s: learning from epoch %d (%s); early stopping and plateau reduction count from here",
                 self.name, epoch + 1, self.reason)

    def reached(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is at or after the onset."""
        return self.epoch is not None and epoch >= self.epoch


class GatedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras early stopping that ignores the epochs before ``onset`` is reached.

    Args:
        onset: the :class:`LearningOnset` of the same fit, or None for plain early stopping.
        **kwargs: as ``keras.callbacks.EarlyStopping``.
    """

    def __init__(self, onset: LearningOnset | None = None, **kwargs):
        super().__init__(**kwargs)
        self.onset = onset

    def on_epoch_end(self, epoch, logs=None):
        if self.onset is not None and not self.onset.reached(epoch):
            return
        super().on_epoch_end(epoch, logs)
