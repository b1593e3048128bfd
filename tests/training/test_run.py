"""``histoedge train`` end to end on tiny image folders (1 epoch, 32 px, a tiny CNN)."""

import argparse
import csv
import json

import numpy as np
import pytest
import yaml

import histoedge.cli
import histoedge.training.run as run_module
from histoedge import HistoedgeError
from histoedge.training.bootstrap import holm
from histoedge.training.ensemble import Ensemble
from histoedge.training.errors import RunConfigChanged
from histoedge.training.report import load_predictions

TINY = ["model.filters=[8, 16]", "model.block_dropout=[0.0, 0.0]", "model.dense_units=[16]",
        "evaluation.bootstrap=20", "training.early_stopping.enabled=false"]


def _args(data, out, *, ensemble=False, members=None, epochs=1, extra=()):
    overrides = list(TINY) + list(extra)
    if members:
        overrides.append(f"ensemble.members={json.dumps(members)}")
    return argparse.Namespace(data=str(data), out=str(out), config=None, ensemble=ensemble, recipe=None,
                              epochs=epochs, image_size=32, batch_size=16, seed=0, magnification=None,
                              label=None, overrides=overrides, quiet=True)


def _split_rows(run):
    with open(run / "splits.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_single_member_run_writes_the_whole_run_directory(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_module.cli_train(_args(image_folder, run)) == 0
    assert "roc_auc" in capsys.readouterr().out
    member = yaml.safe_load((run / "config.yaml").read_text())["recipe"]
    member_dir = run / "members" / member
    for path in ("config.yaml", "splits.csv", "unreadable.csv", "duplicates.csv", "ensemble.json", "metrics.json",
                 "predictions.npz", "report.md", "report.html", "plots/roc.png"):
        assert (run / path).is_file(), path
    for path in ("model.keras", "history.csv", "metrics.json", "DONE", "plots/training_curves.png"):
        assert (member_dir / path).is_file(), path
    ensemble = Ensemble.load(run / "ensemble.json")
    assert ensemble.method == "single" and ensemble.members == [member] and ensemble.image_size == 32
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]) == {member, "ensemble"}
    test = metrics["models"]["ensemble"]["test"]
    assert test["threshold"] == pytest.approx(ensemble.threshold)
    assert test["n"] == sum(row["split"] == "test" for row in _split_rows(run))
    assert len(test["ci"]["accuracy"]) == 2 and "test_at_0.5" in metrics["models"]["ensemble"]
    predictions = load_predictions(run)
    assert np.mean(predictions["val"]["ensemble"][predictions["val_labels"] == 1, 1] >= ensemble.threshold) >= 0.95
    # the augmentation preset chosen from the data is recorded with every value it implies
    augmentation = yaml.safe_load((run / "config.yaml").read_text())["augmentation"]
    assert augmentation["preset"] in ("histology", "generic") and None not in augmentation.values()
    assert metrics["augmentation_preset"] == augmentation["preset"]
    # patient-level results: these images carry no patient id, so each image is its own patient
    patient = metrics["models"][member]["patient"]
    assert patient["n_patients"] == test["n"] and patient["aggregation"] == "mean"
    assert 0 <= patient["recognition_rate"] <= 1 and len(patient["ci"]["recall"]) == 2
    assert test["bootstrap_unit"] == "images"
    assert metrics["threshold_rule"]["rule"] == "patient_lower_bound"
    assert 0 <= metrics["threshold_rule"]["cohort_below_target"] <= 1
    assert metrics["threshold_rule"]["cohort_patients"] == int(np.sum(predictions["val_labels"] == 1))
    assert metrics["operating_point"]["threshold"] == pytest.approx(ensemble.threshold)
    assert "comparisons" not in metrics  # a single model is not compared with itself


def test_ensemble_fits_on_validation_only_and_resumes(image_folder, folder_factory, tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen = []
    real_fit = run_module.fit_ensemble

    def spy_fit(method, **kwargs):
        seen.append(kwargs)
        return real_fit(method, **kwargs)

    monkeypatch.setattr(run_module, "fit_ensemble", spy_fit)
    assert run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"])) == 0

    rows = _split_rows(run)
    n_val, n_test = sum(r["split"] == "val" for r in rows), sum(r["split"] == "test" for r in rows)
    predictions = load_predictions(run)
    (fit_call,) = seen
    assert len(fit_call["val_labels"]) == n_val != len(rows)
    assert all(len(p) == n_val for p in fit_call["val_probs"])
    np.testing.assert_array_equal(fit_call["val_labels"], predictions["val_labels"])
    for name, probs in zip(fit_call["members"], fit_call["val_probs"]):
        np.testing.assert_allclose(probs, predictions["val"][name], atol=1e-6)
    assert len(predictions["test_labels"]) == n_test
    ensemble = Ensemble.load(run / "ensemble.json")
    assert ensemble.method == "stacking" and ensemble.members == ["class_weight", "focal"]
    assert np.asarray(ensemble.stacking["coef"]).shape == (1, 4)
    np.testing.assert_allclose(ensemble.predict_proba([predictions["test"][m] for m in ensemble.members]),
                               predictions["test"]["ensemble"], atol=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selected_member"]["name"] in ("class_weight", "focal")
    assert [(c["model"], c["versus"]) for c in metrics["comparisons"]] == [("ensemble", "class_weight"),
                                                                          ("ensemble", "focal")]
    assert all(len(c["ci"]) == 2 and c["ci"][0] <= c["difference"] <= c["ci"][1] for c in metrics["comparisons"])
    p_values = [c["p"] for c in metrics["comparisons"]]
    assert [c["p_holm"] for c in metrics["comparisons"]] == pytest.approx(holm(p_values))
    assert all(c["p_holm"] >= c["p"] for c in metrics["comparisons"])
    assert metrics["ensemble_fit"] == "validation"
    report = (run / "report.md").read_text()
    assert "The ensemble against its members" in report and "carry no patient ids" in report
    assert "p, Holm over members" in report

    # Second run: both members are DONE, so nothing is retrained.
    import histoedge.training.trainer as trainer_module
    calls = []
    monkeypatch.setattr(trainer_module, "train_member", lambda *a, **k: calls.append(a))
    done_mtimes = {m: (run / "members" / m / "DONE").stat().st_mtime_ns for m in ("class_weight", "focal")}
    assert run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"])) == 0
    assert calls == []
    assert done_mtimes == {m: (run / "members" / m / "DONE").stat().st_mtime_ns for m in done_mtimes}
    np.testing.assert_allclose(load_predictions(run)["test"]["ensemble"], predictions["test"]["ensemble"], atol=1e-6)

    # Neither may another dataset or a changed training setting be mixed into this run.
    other = folder_factory(tmp_path / "other", seed=5)
    with pytest.raises(HistoedgeError, match="different set of images"):
        run_module.cli_train(_args(other, run, ensemble=True, members=["class_weight", "focal"]))
    with pytest.raises(RunConfigChanged, match="different configuration"):
        run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"], epochs=2))
    assert (run / "metrics.json").is_file()

    # Cross-fitting may be added to the finished run: members are reused, the folds are trained, and
    # the cross-fitted ensemble's threshold is chosen on its out-of-fold predictions (train+validation).
    monkeypatch.undo()
    assert run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"],
                                      extra=["ensemble.cv_folds=2"])) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ensemble_fit"] == "cross_fitted_2_folds"
    positives = {s: sum(r["split"] == s and r["label"] == "malignant" for r in _split_rows(run)) for s in ("train", "val")}
    chosen = metrics["threshold_rule"]
    assert chosen["chosen_on"].startswith("out_of_fold")
    assert chosen["val_patients"] == positives["train"] + positives["val"]  # each image its own patient here
    assert metrics["models"]["ensemble_validation_fit"]["threshold"] is not None
    report = (run / "report.md").read_text()
    assert "out-of-fold predictions over train+validation" in report
    # The validation rows scored both ways: out of fold (recomputed from the stored folds) and deployed.
    transfer, at = chosen["transfer"], chosen["threshold"]
    assert transfer["images"] == n_val
    assert transfer["deployed"]["sensitivity"] == pytest.approx(metrics["models"]["ensemble"]["val"]["recall"])
    assert transfer["deployed"]["specificity"] == pytest.approx(metrics["models"]["ensemble"]["val"]["specificity"])
    stored = np.load(run / "crossfit" / "oof.npz")
    ensemble = Ensemble.load(run / "ensemble.json")
    val_rows = np.isin(stored["index"], np.flatnonzero([r["split"] == "val" for r in _split_rows(run)]))
    oof_val = ensemble.predict_proba([stored[f"probs__{m}"][val_rows] for m in ensemble.members])[:, 1]
    val_labels = stored["labels"][val_rows]
    assert transfer["out_of_fold"]["sensitivity"] == pytest.approx(np.mean(oof_val[val_labels == 1] >= at))
    assert transfer["out_of_fold"]["specificity"] == pytest.approx(np.mean(oof_val[val_labels == 0] < at))
    assert f"On the {n_val} validation images, which both scored, the fold models reach sensitivity" in report
    assert transfer["rule"] == "none" and "(ensemble.threshold_transfer=match_flag_rate would use it)" in report

    # Carrying the threshold over by the share of validation images it flags is a recombination too.
    carry = ["ensemble.cv_folds=2", "ensemble.threshold_transfer=match_flag_rate"]
    assert run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"],
                                      extra=carry)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    carried = metrics["threshold_rule"]
    matched = carried["transfer"]["matched"]
    assert carried["transfer"]["rule"] == "match_flag_rate"
    assert carried["out_of_fold_threshold"] == pytest.approx(at)  # the rule's own choice is unchanged
    assert carried["threshold"] == metrics["threshold"] == matched["threshold"]
    assert Ensemble.load(run / "ensemble.json").threshold == pytest.approx(matched["threshold"])
    assert matched["flagged_share"] == pytest.approx(np.mean(oof_val >= at))
    deployed_val = load_predictions(run)["val"]["ensemble"][:, 1]
    assert np.mean(deployed_val >= matched["threshold"]) >= matched["flagged_share"] - 1e-12
    assert np.mean(deployed_val > matched["threshold"]) < matched["flagged_share"] or matched["flagged_share"] == 0
    assert matched["deployed"]["sensitivity"] == pytest.approx(metrics["models"]["ensemble"]["val"]["recall"])
    report = (run / "report.md").read_text()
    assert "carried over to the deployed ensemble as" in report
    assert "At the out-of-fold threshold, " in report and "At that threshold" not in report
    assert "that threshold is used (ensemble.threshold_transfer=match_flag_rate)" in report

    # The cohort rule is a recombination too: its cohort is the validation split's positive patients,
    # even though the threshold is chosen on the larger out-of-fold pool.
    assert run_module.cli_train(_args(image_folder, run, ensemble=True, members=["class_weight", "focal"],
                                      extra=["ensemble.cv_folds=2", "ensemble.threshold_rule=split_lower_bound"])) == 0
    chosen = json.loads((run / "metrics.json").read_text())["threshold_rule"]
    assert chosen["rule"] == "split_lower_bound" and chosen["chosen_on"].startswith("out_of_fold")
    assert chosen["split_patients"] == positives["val"] < chosen["val_patients"]
    assert Ensemble.load(run / "ensemble.json").threshold == pytest.approx(chosen["threshold"])
    assert chosen["cohort_patients"] == positives["val"]
    report = (run / "report.md").read_text()
    assert f"of cohorts of {positives['val']} positive patients (drawn from" in report
    assert (f"At that threshold, {100 * chosen['cohort_below_target']:.0f}% of cohorts of {positives['val']} "
            f"positive patients drawn from those {chosen['val_patients']} fall below sensitivity 0.95.") in report


def test_three_class_ensemble_uses_multinomial_stacking(folder_factory, tmp_path):
    data = folder_factory(tmp_path / "data3", classes=("a", "b", "c"), per_class=(16, 16, 16))
    run = tmp_path / "run"
    assert run_module.cli_train(_args(data, run, ensemble=True, members=["class_weight", "focal"])) == 0
    ensemble = Ensemble.load(run / "ensemble.json")
    assert ensemble.classes == ["a", "b", "c"] and ensemble.threshold is None and ensemble.positive_class is None
    assert ensemble.stacking["multi_class"] == "multinomial"
    assert np.asarray(ensemble.stacking["coef"]).shape == (3, 6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["models"]["ensemble"]["test"]["per_class"]) == {"a", "b", "c"}
    assert "test_at_0.5" not in metrics["models"]["ensemble"]
    assert "Ensemble per class" in (run / "report.md").read_text()


@pytest.mark.parametrize("problem", ["missing", "empty", "one_class", "bad_key"])
def test_input_errors_are_one_line_and_write_nothing(problem, folder_factory, tmp_path, capsys):
    data, extra = tmp_path / "data", []
    if problem == "empty":
        data.mkdir()
    elif problem == "one_class":
        folder_factory(data, classes=("only",), per_class=(12,))
    elif problem == "bad_key":
        folder_factory(data, per_class=(6, 6))
        extra = ["training.epochz=3"]
    args = _args(data, tmp_path / "run", extra=extra)
    with pytest.raises(HistoedgeError):
        run_module.cli_train(args)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--image-size", "32", "--epochs", "1"]
    argv += [item for o in extra for item in ("--set", o)]
    assert histoedge.cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("histoedge train: error:") and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_finished_run_may_gain_a_recipe_but_not_change_or_drop_one(tmp_path):
    from histoedge.training.config import load_config
    from histoedge.training.run import check_resumable

    def config(recipes, members):
        path = tmp_path / "settings.yaml"
        path.write_text(yaml.safe_dump({"recipes": recipes, "ensemble": {"members": members}}))
        return load_config(path)

    wide = {"base": "class_weight", "model": {"dense_units": [32]}}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(config({"wide": wide}, ["focal", "wide"]).to_yaml())
    narrow = {"base": "focal", "model": {"dense_units": [8]}}
    check_resumable(run, config({"wide": wide, "narrow": narrow}, ["focal", "wide", "narrow"]))
    changed = dict(wide, model={"dense_units": [64]})
    with pytest.raises(RunConfigChanged, match=r"recipes\.wide: .*\[32\].* -> .*\[64\]"):
        check_resumable(run, config({"wide": changed, "narrow": narrow}, ["focal", "wide", "narrow"]))
    with pytest.raises(RunConfigChanged, match=r"recipes\.wide: .* -> None"):
        check_resumable(run, config({"narrow": narrow}, ["focal", "narrow"]))
    # the finished `focal` member trained as the built-in recipe: a definition under its name is refused
    with pytest.raises(RunConfigChanged, match=r"recipes\.focal: defined over the built-in recipe"):
        check_resumable(run, config({"wide": wide, "focal": narrow}, ["focal", "wide"]))
