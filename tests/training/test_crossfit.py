"""Cross-fitted stacking: folds grouped by patient, no test rows, out-of-fold predictions only."""

from __future__ import annotations

import numpy as np
import pytest

from histoedge.training.config import load_config
from histoedge.training.crossfit import crossfit_folds, out_of_fold_predictions
from histoedge.training.data import Dataset, ImageRecord, split_dataset


def _dataset(n_patients=24, per_patient=5):
    """Image i carries its own index in its first pixel, so a fake trainer can tell which rows it saw."""
    n = n_patients * per_patient
    images = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    patients = [f"p{i // per_patient}" for i in range(n)]
    labels = np.array([int(p[1:]) % 3 != 0 for p in patients], dtype=np.int64)
    records = [ImageRecord(path=f"/d/{i}.png", label=str(labels[i]), patient=patients[i]) for i in range(n)]
    return Dataset(records=records, images=images, labels=labels, classes=["0", "1"], layout="breakhis")


def _rows(images):
    images = np.asarray(images)
    return (images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)).tolist()


class _FakeModel:
    def __init__(self, number):
        self.number = number

    def predict(self, images, batch_size=None, verbose=0):
        # P(1) names the model that made the prediction
        p1 = np.full(len(images), self.number / 100.0)
        return np.stack([1 - p1, p1], axis=1)


def test_out_of_fold_predictions_never_use_test_rows_or_the_patients_own_model(tmp_path, monkeypatch):
    import histoedge.training.trainer as trainer_module

    dataset = _dataset()
    patients = [r.patient for r in dataset.records]
    splits = split_dataset(dataset, seed=0)
    pool = np.union1d(splits["train"], splits["val"])
    trained = {}

    def fake_train_member(recipe, config, train_data, val_data, classes, out_dir, verbose=1):
        number = len(trained) + 1
        trained[number] = {"fit": _rows(train_data[0]), "stop": _rows(val_data[0]), "recipe": recipe.name}
        return _FakeModel(number)

    monkeypatch.setattr(trainer_module, "train_member", fake_train_member)
    folds = crossfit_folds(dataset.labels, patients, pool, k=3, seed=0)
    config = load_config(overrides=["ensemble.cv_folds=3"])
    oof = out_of_fold_predictions(["class_weight", "focal"], config, dataset, pool, folds, tmp_path, verbose=0)

    assert len(trained) == 6 and [t["recipe"] for t in trained.values()] == ["class_weight"] * 3 + ["focal"] * 3
    test_rows = set(splits["test"].tolist())
    for t in trained.values():
        assert not test_rows & set(t["fit"] + t["stop"])  # no test image trains or early-stops a fold model
    held = np.concatenate([f.held_out for f in folds])
    assert sorted(held.tolist()) == pool.tolist()  # every train+validation image held out exactly once
    for name, probs in oof.items():
        assert probs.shape == (len(pool), 2)
        for row, image in enumerate(pool):
            model = trained[int(round(probs[row, 1] * 100))]
            seen = {patients[i] for i in model["fit"] + model["stop"]}
            assert patients[image] not in seen, (name, image)
            assert model["recipe"] == name
    # folds are patient-grouped and the early-stopping patients are not trained on
    for fold in folds:
        parts = [{patients[i] for i in getattr(fold, p)} for p in ("fit", "stop", "held_out")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])

    # a resumed run reuses the stored folds instead of training again
    trained.clear()
    again = out_of_fold_predictions(["class_weight", "focal"], config, dataset, pool, folds, tmp_path, verbose=0)
    assert trained == {} and all(np.array_equal(again[n], oof[n]) for n in oof)


def test_too_few_patients_for_the_folds_is_a_clear_error():
    from histoedge import HistoedgeError

    dataset = _dataset(n_patients=4)
    with pytest.raises(HistoedgeError, match="cv_folds"):
        crossfit_folds(dataset.labels, [r.patient for r in dataset.records], np.arange(20), k=5)


def test_run_fits_the_cross_fitted_meta_learner_on_train_and_validation_only(tmp_path, monkeypatch):
    import histoedge.training.run as run_module
    import histoedge.training.trainer as trainer_module

    dataset = _dataset()
    splits = split_dataset(dataset, seed=0)
    monkeypatch.setattr(trainer_module, "train_member",
                        lambda recipe, config, train_data, val_data, classes, out_dir, verbose=1: _FakeModel(50))
    fitted = []
    real_fit = run_module.fit_ensemble
    monkeypatch.setattr(run_module, "fit_ensemble", lambda method, **kw: fitted.append(kw) or real_fit(method, **kw))
    config = load_config(overrides=["ensemble.cv_folds=2"])
    ensemble, (pool, oof) = run_module._cross_fitted(["class_weight", "focal"], "stacking", config, dataset,
                                                     splits, tmp_path, verbose=0)
    (call,) = fitted
    # what the threshold may be chosen on (ensemble.threshold_on): train+validation rows only
    assert sorted(pool.tolist()) == sorted(splits["train"].tolist() + splits["val"].tolist())
    assert set(oof) == {"class_weight", "focal"} and all(len(p) == len(pool) for p in oof.values())
    n_pool = len(splits["train"]) + len(splits["val"])
    assert len(call["val_labels"]) == n_pool and all(len(p) == n_pool for p in call["val_probs"])
    with np.load(tmp_path / "crossfit" / "oof.npz") as oof:
        assert not set(oof["index"].tolist()) & set(splits["test"].tolist())
    assert ensemble.method == "stacking" and ensemble.members == ["class_weight", "focal"]


def test_threshold_on_out_of_fold_needs_cross_fitting():
    from histoedge import HistoedgeError

    assert load_config(overrides=["ensemble.cv_folds=3"]).ensemble.threshold_on == "auto"
    with pytest.raises(HistoedgeError, match="threshold_on=out_of_fold needs ensemble.cv_folds"):
        load_config(overrides=["ensemble.threshold_on=out_of_fold"])
    with pytest.raises(HistoedgeError, match="threshold_on"):
        load_config(overrides=["ensemble.threshold_on=test"])


def test_threshold_transfer_needs_an_out_of_fold_threshold():
    from histoedge import HistoedgeError

    assert load_config().ensemble.threshold_transfer == "none"
    match = "ensemble.threshold_transfer=match_flag_rate"
    assert load_config(overrides=["ensemble.cv_folds=3", match]).ensemble.threshold_transfer == "match_flag_rate"
    for overrides in ([match], ["ensemble.cv_folds=3", "ensemble.threshold_on=validation", match]):
        with pytest.raises(HistoedgeError, match="threshold_transfer=match_flag_rate carries an out-of-fold"):
            load_config(overrides=overrides)
    with pytest.raises(HistoedgeError, match="threshold_transfer"):
        load_config(overrides=["ensemble.threshold_transfer=shift"])
