"""Is the ensemble worse than its best member, or is that chance over several comparisons?

For each finished run (``histoedge train --ensemble``), test ROC-AUC of the ensemble minus each
member on the same resampled test patients (paired cluster bootstrap), shown three ways:

* the per-comparison 95% interval, as ``metrics.json`` and the report give it;
* a bootstrap p-value per comparison with Holm's adjustment over the run's members, which
  controls the chance of any false "member better" among them (the family-wise error);
* the same comparisons for a plain mean of the members' probabilities, which needs no fitting:
  if it misses too, no choice of meta-learner would have met "never worse than any member".

Example::

    python bench/ensemble_vs_members.py runs/std12cv runs/std19cv --out bench/results/ensemble_vs_members.md
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_options, emit  # noqa: E402


def compare(run: Path, rounds: int, seed: int) -> list[dict]:
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
    rows = []
    for name, probs in combined.items():
        found = [{"run": run.name, "model": name, "versus": member,
                  **paired_difference(macro_roc_auc, y, probs, predictions["test"][member], clusters,
                                      rounds=rounds, seed=seed)}
                 for member in members]
        add_holm(found)
        rows += found
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished ensemble run directories")
    parser.add_argument("--rounds", type=int, default=4000, help="patient resamples (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_options(parser, json_help=None)
    args = parser.parse_args(argv)
    lines = ["| run | combined | minus member | difference (95% CI, paired) | p | p, Holm over members |",
             "|---|---|---|---|---|---|"]
    for run in args.runs:
        for r in compare(run, args.rounds, args.seed):
            flag = " **member better**" if r["ci"][1] < 0 else ""
            lines.append(f"| {r['run']} | {r['model']} | {r['versus']} | {r['difference']:+.4f} "
                         f"({r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}){flag} | {r['p']:.3f} | {r['p_holm']:.3f} |")
    emit(args, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
