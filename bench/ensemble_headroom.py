"""How much room do an ensemble's members leave any combiner to beat the best of them?

For each finished binary run (``histoedge train --ensemble``), on its test split:

* how alike the members rank images: the mean pairwise correlation of their logits;
* the best member's ROC-AUC;
* the *headroom*: the best ROC-AUC of any non-negative weighting of the members' logits (weights
  on a grid of step ``--step`` summing to 1) chosen on the test split itself, minus the best
  member's. It is an upper bound: no combiner fitted on other data can expect more. When it is
  smaller than the noise of a paired comparison on the test split, any ensemble of these members
  trails whichever member happens to be best there by chance on some runs;
* the shipped ensemble's ROC-AUC.

``--pair BASE:WIDER`` adds, for two runs on the same test rows (a run and a copy of it that gained
members), the wider run's ensemble minus the base run's, on the same resampled test patients.

Example::

    python bench/ensemble_headroom.py runs/std34cv runs/div34 --pair runs/std34cv:runs/div34
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_options, emit  # noqa: E402


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector of ``k`` non-negative multiples of ``step`` summing to 1 [M, k]."""
    units = round(1 / step)
    if not np.isclose(units * step, 1.0):
        raise ValueError(f"--step must divide 1 evenly, got {step}")
    rows = [np.array(c, dtype=float) for c in itertools.product(range(units + 1), repeat=k) if sum(c) == units]
    return np.stack(rows) / units


def headroom(labels, member_scores: dict[str, np.ndarray], step: float = 0.1) -> dict:
    """The best test-fitted weighting of the members' logits against the best single member.

    Args:
        labels: 0/1 per image.
        member_scores: member name -> positive-class probability per image.
        step: grid step of the weights.

    Returns:
        ``{"best_member", "best_member_auc", "combination_auc", "weights", "headroom",
        "correlation"}``; "correlation" is the mean pairwise Pearson correlation of the logits.

    Example::

        headroom([0, 1, 1], {"a": np.array([.2, .7, .9]), "b": np.array([.1, .8, .6])})
    """
    from scipy.special import logit
    from sklearn.metrics import roc_auc_score

    names = list(member_scores)
    x = np.stack([logit(np.clip(np.asarray(member_scores[m], np.float64), 1e-7, 1 - 1e-7)) for m in names])  # [k, N]
    single = {m: float(roc_auc_score(labels, x[i])) for i, m in enumerate(names)}
    grid = simplex_grid(len(names), step)
    aucs = np.array([roc_auc_score(labels, w @ x) for w in grid])
    best = int(np.argmax(aucs))
    best_member = max(single, key=single.get)
    corr = np.corrcoef(x) if len(names) > 1 else np.ones((1, 1))
    pairs = corr[np.triu_indices(len(names), 1)]
    return {"best_member": best_member, "best_member_auc": single[best_member], "member_auc": single,
            "combination_auc": float(aucs[best]), "weights": dict(zip(names, grid[best].tolist())),
            "headroom": float(aucs[best] - single[best_member]),
            "correlation": float(pairs.mean()) if pairs.size else 1.0}


def _binary_test(run: Path):
    from histoedge.training.report import load_predictions

    predictions = load_predictions(run)
    if len(predictions["classes"]) != 2:
        raise SystemExit(f"{run}: headroom is defined here for two classes, the run has {len(predictions['classes'])}")
    return predictions


def measure(run: Path, step: float) -> dict:
    from sklearn.metrics import roc_auc_score

    predictions = _binary_test(run)
    y, test = predictions["test_labels"], predictions["test"]
    found = headroom(y, {m: test[m][:, 1] for m in predictions["members"]}, step)
    return {"run": run.name, "members": len(predictions["members"]), **found,
            "ensemble_auc": float(roc_auc_score(y, test["ensemble"][:, 1]))}


def compare_ensembles(base: Path, wider: Path, rounds: int, seed: int) -> dict:
    """The wider run's ensemble minus the base run's on the same test patients (paired bootstrap)."""
    from histoedge.training.bootstrap import cluster_ids, paired_difference
    from histoedge.training.data import read_splits_csv
    from histoedge.training.metrics import macro_roc_auc

    rows = {run: [(r.path, r.patient) for r in read_splits_csv(run / "splits.csv") if r.split == "test"]
            for run in (base, wider)}
    if rows[base] != rows[wider]:
        raise SystemExit(f"{base} and {wider} do not hold the same test rows; pair a run with its own copy")
    a, b = _binary_test(wider), _binary_test(base)
    clusters = cluster_ids([patient for _, patient in rows[base]], len(a["test_labels"]))
    found = paired_difference(macro_roc_auc, a["test_labels"], a["test"]["ensemble"], b["test"]["ensemble"],
                              clusters, rounds=rounds, seed=seed)
    return {"base": base.name, "wider": wider.name, **found}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="finished binary ensemble run directories")
    parser.add_argument("--pair", action="append", default=[], metavar="BASE:WIDER",
                        help="two runs on the same test rows: report WIDER's ensemble minus BASE's")
    parser.add_argument("--step", type=float, default=0.1, help="grid step of the weights (default 0.1)")
    parser.add_argument("--rounds", type=int, default=4000, help="patient resamples for --pair (default 4000)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_options(parser)
    args = parser.parse_args(argv)
    measured = [measure(run, args.step) for run in args.runs]
    pairs = [compare_ensembles(*map(Path, text.split(":", 1)), args.rounds, args.seed) for text in args.pair]
    lines = ["| run | members | logit correlation | best member (test ROC-AUC) | test-fitted combination "
             "| headroom | shipped ensemble |", "|---|---|---|---|---|---|---|"]
    for r in measured:
        weights = ", ".join(f"{m} {w:.1f}" for m, w in r["weights"].items() if w > 0)
        lines.append(f"| {r['run']} | {r['members']} | {r['correlation']:.3f} | {r['best_member']} "
                     f"{r['best_member_auc']:.4f} | {r['combination_auc']:.4f} ({weights}) | "
                     f"{r['headroom']:+.4f} | {r['ensemble_auc']:.4f} |")
    if pairs:
        lines += ["", "| base | wider | wider ensemble minus base ensemble, test ROC-AUC (95% CI, paired) | p |",
                  "|---|---|---|---|"]
        lines += [f"| {p['base']} | {p['wider']} | {p['difference']:+.4f} ({p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}) "
                  f"| {p['p']:.3f} |" for p in pairs]
    emit(args, "\n".join(lines) + "\n", {"runs": measured, "pairs": pairs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
