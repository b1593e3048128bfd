"""Re-evaluate a finished run directory with the patient-level evaluation, without retraining.

Reads ``RUN/predictions.npz`` and ``RUN/splits.csv`` (patients) and prints, for every model: test
ROC-AUC with its patient-bootstrap interval, the validation-selected member, the ensemble's paired
ROC-AUC difference to each member, and the test sensitivity/specificity at the threshold chosen by
each rule (``validation_point`` and ``patient_lower_bound``) against the target.  With several runs
it prints one table row per run and model, e.g. for the seed table::

    .venv/bin/python bench/rescore_run.py runs/seed11 runs/seed12 runs/seed13 --json bench/results/seeds.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


from histoedge.training.bootstrap import cluster_ids, paired_difference
from histoedge.training.metrics import evaluate, macro_roc_auc
from histoedge.training.patients import patient_metrics
from histoedge.training.report import load_predictions
from histoedge.training.thresholds import select_threshold


def rescore(run: Path, *, target: float, confidence: float, rounds: int) -> dict:
    predictions = load_predictions(run)
    with open(run / "splits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = {s: [r["patient"] or None for r in rows if r["split"] == s] for s in ("val", "test")}
    val_y, test_y = predictions["val_labels"], predictions["test_labels"]
    clusters = cluster_ids(patients["test"], len(test_y))
    members = predictions["members"]
    out = {"run": str(run), "test_patients": len(set(patients["test"])), "val_patients": len(set(patients["val"])),
           "models": {}}
    for name, test_p in predictions["test"].items():
        val_p = predictions["val"][name]
        scored = evaluate(test_y, test_p, bootstrap=rounds, clusters=clusters)
        result = {"val_roc_auc": macro_roc_auc(val_y, val_p), "test_roc_auc": scored["roc_auc"],
                  "test_roc_auc_ci": scored["ci"]["roc_auc"], "rules": {}}
        for rule in ("validation_point", "patient_lower_bound"):
            choice = select_threshold(rule, val_y, val_p[:, 1], target=target, patients=patients["val"],
                                      confidence=confidence)
            test = evaluate(test_y, test_p, threshold=choice["threshold"], bootstrap=rounds, clusters=clusters)
            patient = patient_metrics(test_y, test_p, patients["test"], threshold=choice["threshold"], bootstrap=0)
            result["rules"][rule] = {"threshold": choice["threshold"], "test_sensitivity": test["recall"],
                                     "test_sensitivity_ci": test["ci"]["recall"],
                                     "test_specificity": test["specificity"],
                                     "patient_sensitivity": patient["recall"],
                                     "patient_specificity": patient["specificity"],
                                     "recognition_rate": patient["recognition_rate"]}
        if name not in members:
            result["versus"] = {m: paired_difference(macro_roc_auc, test_y, test_p, predictions["test"][m], clusters,
                                                     rounds=rounds) for m in members}
        out["models"][name] = result
    out["selected_member"] = max(members, key=lambda m: out["models"][m]["val_roc_auc"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [rescore(run, target=args.target, confidence=args.confidence, rounds=args.rounds) for run in args.runs]
    print(f"{'run':<22}{'model':<24}{'test AUC (patient CI)':<26}{'vs ensemble: diff (CI)':<28}"
          f"{'sens@point':>11}{'sens@margin':>12}{'spec@margin':>12}")
    for result in results:
        ensemble = result["models"].get("ensemble", {})
        for name, m in result["models"].items():
            ci = m["test_roc_auc_ci"]
            versus = ensemble.get("versus", {}).get(name)
            diff = (f"{versus['difference']:+.3f} ({versus['ci'][0]:+.3f}, {versus['ci'][1]:+.3f})" if versus else "")
            tag = " *" if name == result["selected_member"] else ""
            print(f"{Path(result['run']).name:<22}{name + tag:<24}{m['test_roc_auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
                  f"{'':<7}{diff:<28}{m['rules']['validation_point']['test_sensitivity']:>11.3f}"
                  f"{m['rules']['patient_lower_bound']['test_sensitivity']:>12.3f}"
                  f"{m['rules']['patient_lower_bound']['test_specificity']:>12.3f}")
        print(f"{'':<22}(* validation-selected member; {result['val_patients']} validation, "
              f"{result['test_patients']} test patients)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
