"""Deferred re-weighting, plateau scaling of a schedule, and the history CSV."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from histoedge.training import losses
from histoedge.training.callbacks.drw import DeferredReweighting, default_drw_epoch, effective_number_weights
from histoedge.training.callbacks.history import HistoryCSV
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
