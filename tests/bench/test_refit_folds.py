"""bench/refit_folds.py: a stored cross-fitting fold trained again on exactly its rows."""

import argparse

import numpy as np

import histoedge.training.run as run_module
from bench.refit_folds import markdown, refit
from tests.training.conftest import write_image_folder

TINY = ["model.filters=[8, 16]", "model.block_dropout=[0.0, 0.0]", "model.dense_units=[16]",
        "evaluation.bootstrap=20", "training.early_stopping.enabled=false", "ensemble.cv_folds=2",
        'ensemble.members=["focal", "class_weight"]']


def test_refit_reproduces_the_stored_fold_and_applies_overrides(tmp_path):
    data = write_image_folder(tmp_path / "data", per_class=(24, 30))
    run = tmp_path / "run"
    args = argparse.Namespace(data=str(data), out=str(run), config=None, ensemble=True, recipe=None, epochs=2,
                              image_size=32, batch_size=16, seed=0, magnification=None, label=None,
                              overrides=TINY, quiet=True)
    assert run_module.cli_train(args) == 0
    same = refit(run, data, "focal", 1, [])
    # same rows, same seed, same code: the held-out predictions come out as stored
    assert same["held_out_auc"] == same["stored_auc"] and same["epochs"] == 2
    assert len(same["val_auc"]) == 2 and all(0 <= auc <= 1 for auc in same["val_auc"])
    with np.load(run / "crossfit" / "focal" / "fold1.npz") as stored:
        assert len(stored["held_out"]) > 0 and not set(stored["held_out"]) & set(stored["fit"])
    shorter = refit(run, data, "focal", 1, ["training.epochs=1"])
    assert shorter["epochs"] == 1 and shorter["overrides"] == ["training.epochs=1"]
    table = markdown([same, shorter], "today")
    assert table.count("\n") == 3 and "| run | focal | fold1.npz |" in table
