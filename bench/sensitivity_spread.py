"""How far a small test split's sensitivity can fall from the threshold's promise: cross-fitted runs.

The default rule (``patient_lower_bound``) bounds the *mean* sensitivity over patients like the
out-of-fold ones.  A test split holds only 7-11 malignant patients, and one of them can hold a
seventh of the malignant images, so the sensitivity measured on it spreads far around that mean.
For every finished cross-fitted run this prints, from the run's own out-of-fold predictions only:

* the predicted share of held-out splits (as many malignant patients as the test split, drawn
  from the out-of-fold malignant patients) whose sensitivity at the run's threshold falls below
  the goal;
* the lowest median P(malignant) of a malignant patient, out-of-fold and on test: a test patient
  below every out-of-fold one is one no rule fitted on those patients could anticipate;
* a stricter rule for comparison, ``ensemble.threshold_rule=split_lower_bound``: the highest
  threshold at which 90% of such splits (as many malignant patients as the validation split)
  reach the target, and its test sensitivity and specificity.  It bounds a split's sensitivity
  instead of the mean, at the cost of specificity.

Example::

    python bench/sensitivity_spread.py runs/run14 runs/run15 --out bench/results/sensitivity_spread.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_options, emit  # noqa: E402

GOAL = 0.93
ROUNDS = 4000


def out_of_fold_threshold(rule: dict) -> float | None:
    """The threshold the rule chose on out-of-fold scores, before any carrying over (None: chosen on validation).

    Args:
        rule: a run's ``metrics.json`` ``threshold_rule``.
    """
    if not str(rule.get("chosen_on", "")).startswith("out_of_fold"):
        return None
    return rule.get("out_of_fold_threshold", rule.get("threshold"))


def _by_patient(scores, positive, patients) -> dict:
    """Scores of the positive rows, grouped by patient."""
    groups: dict[str, list] = {}
    for score, is_positive, patient in zip(scores, positive, patients):
        if is_positive:
            groups.setdefault(patient, []).append(float(score))
    return {k: np.array(v) for k, v in groups.items()}


def out_of_fold(run: Path):
    """``(ensemble, rows, patient, index, labels, scores)`` of a cross-fitted run directory.

    ``rows``: ``splits.csv``, one per dataset image; ``patient``: each image's patient id (an
    image without one is its own); ``index``: the dataset rows of the out-of-fold pool, with their
    ``labels`` and the ensemble's out-of-fold P(positive class), ``scores``.
    """
    from histoedge.training.ensemble import Ensemble

    ensemble = Ensemble.load(run / "ensemble.json")
    with open(run / "splits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    patient = [r["patient"] or f"image-{i}" for i, r in enumerate(rows)]
    with np.load(run / "crossfit" / "oof.npz") as oof:
        index, labels = oof["index"], oof["labels"]
        scores = ensemble.predict_proba([oof[f"probs__{n}"] for n in ensemble.members])[:, ensemble.positive_class or 1]
    return ensemble, rows, patient, index, labels, scores


def analyse(run: Path) -> dict:
    """The figures above for one cross-fitted run directory."""
    from histoedge.training.report import load_predictions
    from histoedge.training.thresholds import cohort_sensitivities, select_threshold

    ensemble, rows, patient, index, oof_y, oof_p = out_of_fold(run)
    positive_class = ensemble.positive_class or 1
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = load_predictions(run)
    test_y, test_p = predictions["test_labels"], predictions["test"]["ensemble"][:, positive_class]
    test_rows = [i for i, r in enumerate(rows) if r["split"] == "test"]
    oof_groups = _by_patient(oof_p, oof_y == positive_class, [patient[i] for i in index])
    test_groups = _by_patient(test_p, test_y == positive_class, [patient[i] for i in test_rows])
    val_positive = len({patient[i] for i, r in enumerate(rows)
                        if r["split"] == "val" and r["label"] == ensemble.classes[positive_class]})
    threshold, target = float(ensemble.threshold), float(ensemble.target_sensitivity)
    # Out-of-fold scores are read at the threshold chosen on them, the test split at the one deployed
    # (they differ when ensemble.threshold_transfer carried it over).
    on_oof = out_of_fold_threshold(metrics.get("threshold_rule") or {})
    on_oof = threshold if on_oof is None else float(on_oof)
    groups = list(oof_groups.values())
    spread = cohort_sensitivities(np.array([np.sum(g >= on_oof) for g in groups]), np.array([len(g) for g in groups]),
                                  split_patients=len(test_groups), rounds=ROUNDS)
    strict = select_threshold("split_lower_bound", oof_y, oof_p, target=target, confidence=0.9, rounds=ROUNDS,
                              patients=[patient[i] for i in index], positive_class=positive_class,
                              split_patients=val_positive)["threshold"]
    positive = test_y == positive_class
    return {"run": run.name, "threshold": threshold, "target": target, "goal": GOAL,
            "oof_malignant_patients": len(oof_groups), "test_malignant_patients": len(test_groups),
            "predicted_share_below_goal": float(np.mean(spread < GOAL - 1e-12)),
            "predicted_median_sensitivity": float(np.median(spread)),
            "test_sensitivity": float(np.mean(test_p[positive] >= threshold)),
            "test_specificity": float(np.mean(test_p[~positive] < threshold)),
            "lowest_patient_median_oof": float(min(np.median(g) for g in groups)),
            "lowest_patient_median_test": float(min(np.median(g) for g in test_groups.values())),
            "split_bound": {"patients": val_positive, "threshold": strict,
                            "test_sensitivity": float(np.mean(test_p[positive] >= strict)),
                            "test_specificity": float(np.mean(test_p[~positive] < strict))},
            "ensemble_fit": metrics.get("ensemble_fit")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories with ensemble.cv_folds set")
    add_output_options(parser)
    args = parser.parse_args(argv)
    results = [analyse(run) for run in args.runs]
    lines = [f"| run | threshold | malignant patients, out-of-fold / test | predicted splits below {GOAL} "
             "| test sensitivity / specificity | lowest malignant patient's median P, out-of-fold / test "
             "| split-bound rule: threshold, test sensitivity / specificity |", "|---|---|---|---|---|---|---|"]
    for r in results:
        strict = r["split_bound"]
        lines.append(" | ".join([
            f"| {r['run']}", f"{r['threshold']:.3f}", f"{r['oof_malignant_patients']} / {r['test_malignant_patients']}",
            f"{r['predicted_share_below_goal']:.1%}", f"{r['test_sensitivity']:.3f} / {r['test_specificity']:.3f}",
            f"{r['lowest_patient_median_oof']:.2f} / {r['lowest_patient_median_test']:.2f}",
            f"{strict['threshold']:.3f} (m={strict['patients']}), "
            f"{strict['test_sensitivity']:.3f} / {strict['test_specificity']:.3f} |"]))
    every = float(np.prod([1 - r["predicted_share_below_goal"] for r in results]))
    lines += ["", f"Predicted chance that every one of these {len(results)} runs reaches {GOAL}: {every:.0%}."]
    emit(args, "\n".join(lines) + "\n", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
