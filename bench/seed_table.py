"""The ensemble judged over several data seeds: one table from finished run directories.

Each run is ``histoedge train --ensemble`` on its own synthetic seed (with ``ensemble.cv_folds``
set, ``metrics.json`` holds both the validation-fitted and the cross-fitted ensemble). For every
run the table lists each member and each ensemble with test ROC-AUC (95% patient-bootstrap
interval), the cross-fitted ensemble's paired ROC-AUC difference to it (same resampled test
patients), and the test sensitivity at the model's own validation-chosen threshold against the
target. The closing lines say whether the goals hold on every seed: test sensitivity of the
ensemble >= 0.93, and no member significantly better than the ensemble.

Example::

    for s in 11 12 13; do
        histoedge data synth --n 1500 --size 64 --seed $s --out runs/data$s
        histoedge train --data runs/data$s --out runs/run$s --ensemble --image-size 64 --set ensemble.cv_folds=3
    done
    python bench/seed_table.py runs/run11 runs/run12 runs/run13 --out bench/results/seeds.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_options, emit  # noqa: E402
from sensitivity_spread import out_of_fold_threshold  # noqa: E402

SENSITIVITY_GOAL = 0.93
LABELS = {"ensemble": "ensemble, cross-fitted stacking", "ensemble_validation_fit": "ensemble, validation-fitted stacking"}


def _interval(values) -> str:
    return "" if not values else f" ({values[0]:.3f}-{values[1]:.3f})"


def _difference(item: dict | None) -> str:
    if item is None:
        return ""
    low, high = item["ci"]
    flag = " (ensemble better)" if item["a_better"] else " (**model better**)" if item["b_better"] else ""
    return f"{item['difference']:+.3f} ({low:+.3f}, {high:+.3f}){flag}"


def run_rows(run: Path) -> tuple[list[str], dict]:
    """Markdown rows for one run, and the facts the verdict needs."""
    metrics = json.loads((run / "metrics.json").read_text())
    models, members = metrics["models"], metrics["members"]
    selected = metrics["selected_member"]["name"]
    versus = {c["versus"]: c for c in metrics.get("comparisons", []) if c["model"] == "ensemble"}
    rows = []
    for name in [*members, *[k for k in ("ensemble_validation_fit", "ensemble") if k in models]]:
        model = models[name]
        test = model["test"]
        cross_fitted = str(metrics.get("ensemble_fit", "")).startswith("cross_fitted")
        label = (LABELS.get(name, name) if cross_fitted or name != "ensemble" else "ensemble, validation-fitted stacking")
        label = label + (" (validation-selected)" if name == selected else "")
        sensitivity = test.get("recall")
        rows.append(f"| {run.name} | {label} | {model['val'].get('roc_auc', float('nan')):.3f} | "
                    f"{test['roc_auc']:.3f}{_interval(test['ci'].get('roc_auc'))} | "
                    f"{model['patient'].get('roc_auc', float('nan')):.3f} | {_difference(versus.get(name))} | "
                    f"{sensitivity:.3f}{_interval(test['ci'].get('recall'))} at {model['threshold']:.3f} |")
    ensemble = models["ensemble"]
    facts = {"run": run.name, "data": metrics.get("data"), "ensemble_fit": metrics.get("ensemble_fit"),
             "test_patients": metrics["dataset"]["per_split"]["test"].get("patients"),
             "ensemble_sensitivity": ensemble["test"]["recall"],
             "ensemble_specificity": ensemble["test"].get("specificity"),
             "target": metrics.get("target_sensitivity"),
             "members_significantly_better": [c["versus"] for c in versus.values() if c["b_better"]],
             "selected_member": selected,
             "ensemble_minus_selected": versus.get(selected, {}).get("difference"),
             "transfer": (metrics.get("threshold_rule") or {}).get("transfer"),
             "out_of_fold_threshold": out_of_fold_threshold(metrics.get("threshold_rule") or {})}
    return rows, facts


def _transfer_lines(facts: list[dict]) -> list[str]:
    """How the out-of-fold threshold moves on the deployed members (the validation images, scored both ways)."""
    if not facts:
        return []
    pairs = [(f["transfer"]["out_of_fold"], f["transfer"]["deployed"]) for f in facts]

    def rates(r: dict) -> str:
        return "/".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("sensitivity", "specificity"))

    shown = ", ".join(f"{f['run']} {rates(a)} to {rates(b)}" for f, (a, b) in zip(facts, pairs))
    change = [(b["sensitivity"] - a["sensitivity"], b["specificity"] - a["specificity"]) for a, b in pairs
              if None not in (*a.values(), *b.values())]
    mean = (f" Mean change: sensitivity {sum(c[0] for c in change) / len(change):+.3f}, specificity "
            f"{sum(c[1] for c in change) / len(change):+.3f}." if change else "")
    lines = [f"Validation images at the out-of-fold threshold, sensitivity/specificity from the fold models to the "
             f"deployed members: {shown}.{mean}"]
    matched = [f for f in facts if f["transfer"].get("matched") and f.get("out_of_fold_threshold") is not None]
    if matched:
        lines.append("Threshold flagging as many validation images on the deployed members (ensemble.threshold_transfer"
                     "=match_flag_rate), from the out-of-fold threshold, with the deployed members' sensitivity/"
                     "specificity there: " + ", ".join(
                         f"{f['run']} {f['out_of_fold_threshold']:.3f} to {f['transfer']['matched']['threshold']:.3f} "
                         f"({rates(f['transfer']['matched']['deployed'])}, {f['transfer'].get('rule', 'none')} used)"
                         for f in matched) + ".")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    add_output_options(parser, json_help="also write the per-run facts here")
    args = parser.parse_args(argv)

    lines = ["| run | model | val ROC-AUC | test ROC-AUC (95% CI, patients resampled) | patient-level ROC-AUC "
             "| ensemble minus model (95% CI, paired; the cross-fitted one where run) | test sensitivity (95% CI) at its threshold |",
             "|---|---|---|---|---|---|---|"]
    facts = []
    for run in args.runs:
        rows, fact = run_rows(run)
        lines += rows
        facts.append(fact)
    met = all(f["ensemble_sensitivity"] >= SENSITIVITY_GOAL for f in facts)
    never_worse = not any(f["members_significantly_better"] for f in facts)
    lines += ["", f"Ensemble test sensitivity >= {SENSITIVITY_GOAL} on every run: {'yes' if met else '**no**'} "
              f"({', '.join(format(f['ensemble_sensitivity'], '.3f') for f in facts)}).",
              f"No member significantly better than the ensemble on any run: {'yes' if never_worse else '**no**'}."]
    lines += _transfer_lines([f for f in facts if f["transfer"]])
    emit(args, "\n".join(lines) + "\n", facts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
