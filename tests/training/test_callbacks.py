"""Deferred re-weighting, plateau scaling of a schedule, the learning-onset gate, and the history CSV."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from histoedge.training import losses
from histoedge.training.callbacks.drw import DeferredReweighting, default_drw_epoch, effective_number_weights
from histoedge.training.callbacks.history import HistoryCSV
from histoedge.training.callbacks.onset import GatedEarlyStopping, LearningOnset
from histoedge.training.callbacks.plateau import ReduceLROnPlateau
from histoedge.training.config import ConfigError
from histoedge.training.schedules import ScaledSchedule


def tiny_model(learning_rate=0.01):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="probabilities")(inputs))
    return model, ScaledSchedule(learning_rate)


def tiny_data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), np.eye(2, dtype="float32")[rng.integers(0, 2, n)]


def test_effective_number_weights_match_the_formula():
    counts = np.array([1000, 100])
    raw = (1 - 0.9999) / (1 - 0.9999 ** counts)
    np.testing.assert_allclose(effective_number_weights(counts), raw / raw.sum() * 2, rtol=1e-5)
    assert effective_number_weights([5, 5, 5], beta=0.99).sum() == pytest.approx(3.0)
    assert default_drw_epoch(200) == 160 and default_drw_epoch(10) == 8 and default_drw_epoch(1) == 0


class WeightSpy(keras.callbacks.Callback):
    def __init__(self, loss):
        super().__init__()
        self.loss, self.seen = loss, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(self.loss.class_weights.numpy().copy())


def test_drw_switches_weights_at_the_start_epoch():
    counts = [90, 10]
    loss = losses.get("ldam", class_counts=counts)
    model, schedule = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss=loss)
    plateau = ReduceLROnPlateau(schedule, monitor="loss", patience=100)
    plateau.best, plateau.wait = 0.1, 7
    drw = DeferredReweighting(loss, counts, start_epoch=3, reset=[plateau])
    spy = WeightSpy(loss)
    x, y = tiny_data()
    model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[drw, spy])
    assert drw.switched_at == 3
    for epoch in range(3):
        np.testing.assert_allclose(spy.seen[epoch], [1.0, 1.0])
    for epoch in (3, 4):
        np.testing.assert_allclose(spy.seen[epoch], effective_number_weights(counts), rtol=1e-6)
    assert spy.seen[4][1] > spy.seen[4][0]  # the rare class weighs more
    assert plateau.wait == 0 and plateau.best == np.inf  # reset when the loss changed


def test_drw_refuses_a_loss_without_class_weights():
    with pytest.raises(ConfigError, match="per-class weights"):
        DeferredReweighting(losses.get("crossentropy"), [5, 5], start_epoch=1)


def test_plateau_scales_the_schedule_and_history_csv_records_lr(tmp_path):
    model, schedule = tiny_model(learning_rate=0.1)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="categorical_crossentropy")
    # monitoring an accuracy that cannot improve past its first value forces reductions
    plateau = ReduceLROnPlateau(schedule, monitor="never_improves", factor=0.5, patience=2)

    class Constant(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["never_improves"] = 1.0

    history = HistoryCSV(tmp_path / "history.csv")
    x, y = tiny_data()
    model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[Constant(), history, plateau])
    # epoch 1 sets the best; waits at epochs 2, 3 -> reduce; 4, 5 -> reduce again
    assert float(schedule.scale.numpy()) == pytest.approx(0.25)
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0])[:3] == ["epoch", "loss", "lr"]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.1) and lrs[3] == pytest.approx(0.05) and lrs[4] == pytest.approx(0.05)


def drive(callbacks, epochs, schedule=None):
    """Feed each callback the given per-epoch logs, as fit() would; returns the epoch it stopped."""
    model, default = tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(schedule or default), loss="categorical_crossentropy")
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    for epoch, logs in enumerate(epochs):
        for callback in callbacks:
            callback.on_epoch_end(epoch, dict(logs))
        if model.stop_training:
            return epoch
    return None


def test_onset_is_the_first_epoch_reaching_min_auc():
    onset = LearningOnset(min_auc=0.75, max_wait=10)
    drive([onset], [{"val_auc": auc} for auc in (0.5, 0.62, 0.81, 0.5, 0.9)])
    assert onset.epoch == 2 and "0.810" in onset.reason
    assert not onset.reached(1) and onset.reached(2) and onset.reached(4)


def test_onset_is_assumed_after_max_wait_with_a_warning(caplog):
    onset = LearningOnset(min_auc=0.75, max_wait=3, name="member cw")
    with caplog.at_level("WARNING"):
        drive([onset], [{"val_auc": 0.5}] * 6)
    assert onset.epoch == 2
    assert "member cw: validation ROC-AUC is 0.500 after 3 epochs" in caplog.text


def test_onset_with_abort_stops_the_attempt_at_max_wait_instead():
    onset = LearningOnset(min_auc=0.75, max_wait=3, abort=True)
    assert drive([onset], [{"val_auc": 0.5}] * 6) == 2
    assert onset.aborted and onset.epoch is None and not onset.learned
    learned = LearningOnset(min_auc=0.75, max_wait=3, abort=True)
    assert drive([learned], [{"val_auc": 0.5}, {"val_auc": 0.8}] + [{"val_auc": 0.5}] * 4) is None
    assert learned.learned and not learned.aborted and learned.epoch == 1


def test_onset_without_the_metric_counts_from_the_first_epoch():
    onset = LearningOnset()
    drive([onset], [{"val_loss": 1.0}] * 2)
    assert onset.epoch == 0 and onset.reason == "no val_auc logged"
    with pytest.raises(ValueError, match="min_auc"):
        LearningOnset(min_auc=0.5)
    with pytest.raises(ValueError, match="max_wait"):
        LearningOnset(max_wait=-1)


# Seven epochs on the trivial solution (flat loss, chance ranking), then learning: the
# cross-fitting failure. Plain early stopping ends it on the plateau; the gated one does not.
PLATEAU_THEN_LEARNING = ([{"val_loss": 0.78, "val_auc": 0.5}] * 7
                         + [{"val_loss": 0.5, "val_auc": 0.85}, {"val_loss": 0.3, "val_auc": 0.93}]
                         + [{"val_loss": 0.35, "val_auc": 0.92}] * 6)


def test_plain_early_stopping_ends_a_model_still_on_its_plateau():
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    assert drive([stop], PLATEAU_THEN_LEARNING) == 3 and stop.best_epoch == 0


def test_gated_early_stopping_counts_from_the_onset():
    onset = LearningOnset(min_auc=0.75, max_wait=20)
    stop = GatedEarlyStopping(onset, monitor="val_loss", patience=3, restore_best_weights=True)
    stopped = drive([onset, stop], PLATEAU_THEN_LEARNING)
    assert onset.epoch == 7
    assert stop.best_epoch == 8 and stopped == 11  # best at epoch 9 (1-based), three more without gain
    plain = GatedEarlyStopping(None, monitor="val_loss", patience=3)
    assert drive([plain], PLATEAU_THEN_LEARNING) == 3


def test_plateau_reduction_waits_for_the_onset():
    schedule = ScaledSchedule(0.01)
    onset = LearningOnset(min_auc=0.75, max_wait=20)
    plateau = ReduceLROnPlateau(schedule, monitor="val_loss", factor=0.5, patience=2, gate=onset)
    drive([onset, plateau], PLATEAU_THEN_LEARNING[:7], schedule)
    assert float(schedule.scale.numpy()) == pytest.approx(1.0)  # ungated: halved three times
    ungated = ReduceLROnPlateau(ScaledSchedule(0.01), monitor="val_loss", factor=0.5, patience=2)
    drive([ungated], PLATEAU_THEN_LEARNING[:7], ungated.schedule)
    assert float(ungated.schedule.scale.numpy()) == pytest.approx(0.125)
