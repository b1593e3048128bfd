"""Is the ensemble worse than its best member, or is that chance over several comparisons?

For each finished run (``histoedge train --ensemble``), test ROC-AUC of the ensemble minus each
member on the same resampled test patients (paired cluster bootstrap), shown three ways:

* the per-comparison 95% interval, as ``metrics.json`` and the report give it;
* a bootstrap p-value per comparison with Holm's adjustment over the run's members, which
  controls the chance of any false "member better" among them (the family-wise error);
* the same comparisons for a plain mean of the members' probabilities, which needs no fitting:
  if it misses too, no choice of meta-learner would have met "never worse than any member";
* with ``--members-too``, each member against the other members in the same way, and a count of
  the runs on which each model trails some member: how often a model the user could have shipped
  instead of the ensemble would have failed the same test.

Example::

    python bench/ensemble_vs_members.py runs/std12cv runs/std19cv --out bench/results/ensemble_vs_members.md
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


def compare(run: Path, rounds: int, seed: int, members_too: bool = False) -> list[dict]:
    from histoedge.training.bootstrap import add_holm, cluster_ids, paired_difference
    from histoedge.training.metrics import macro_roc_auc
    from histoedge.training.report import load_predictions

    with open(run / "splits.csv", newline="") as handle:
        test = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    predictions = load_predictions(run)
    y, members = predictions["test_labels"], predictions["members"]
    clusters = cluster_ids([r["patient"] or None for r in test], len(y))
    combined = {"ensemble": predictions["test"]["ensemble"],
                "mean of members": np.mean([predictions["test"][m] for m in members], axis=0)}
    if members_too:
        combined.update((m, predictions["test"][m]) for m in members)
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    selected = (metrics.get("selected_member") or {}).get("name")
    rows = []
    for name, probs in combined.items():
        found = [{"run": run.name, "model": name, "versus": member, "selected": name == selected,
                  **paired_difference(macro_roc_auc, y, probs, predictions["test"][member], clusters,
                                      rounds=rounds, seed=seed)}
                 for member in members if member != name]
        add_holm(found)
        rows += found
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished ensemble run directories")
    parser.add_argument("--rounds", type=int, default=4000, help="patient resamples (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members-too", action="store_true",
                        help="also compare each member with the other members, and count the runs each model trails")
    add_output_options(parser, json_help=None)
    args = parser.parse_args(argv)
    lines = ["| run | combined | minus member | difference (95% CI, paired) | p | p, Holm over members |",
             "|---|---|---|---|---|---|"]
    found = [r for run in args.runs for r in compare(run, args.rounds, args.seed, args.members_too)]
    for r in found:
        flag = " **member better**" if r["ci"][1] < 0 else ""
        lines.append(f"| {r['run']} | {r['model']} | {r['versus']} | {r['difference']:+.4f} "
                     f"({r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}){flag} | {r['p']:.3f} | {r['p_holm']:.3f} |")
    if args.members_too:
        lines += ["", *trailing_table(found)]
    emit(args, "\n".join(lines) + "\n")
    return 0


def trailing_table(rows: list[dict]) -> list[str]:
    """Per model, the runs on which it trails some member (interval below 0; and with Holm's p < 0.05)."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| model | runs trailing some member, per comparison | with Holm over the members |", "|---|---|---|"]
    chosen = {"validation-selected member": lambda r: r["selected"]}
    for model in [*models, *chosen]:
        pick = chosen.get(model, lambda r, model=model: r["model"] == model)
        behind = {run: [r for r in rows if r["run"] == run and pick(r) and r["ci"][1] < 0] for run in runs}
        per = [run for run in runs if behind[run]]
        holm = [run for run in runs if any(r["p_holm"] < 0.05 for r in behind[run])]
        lines.append(f"| {model} | {len(per)} of {len(runs)}{' (' + ', '.join(per) + ')' if per else ''} "
                     f"| {len(holm)} of {len(runs)}{' (' + ', '.join(holm) + ')' if holm else ''} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
