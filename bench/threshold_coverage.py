"""Does the default threshold rule keep its one-sided confidence when the patients are new?

``patient_lower_bound`` takes the highest threshold whose patient-bootstrap lower bound (level
``confidence``, 0.9 by default) of sensitivity reaches the target.  If that bound is right, the
sensitivity over the whole population of patients at the chosen threshold falls below the target
in at most a tenth of draws of the patients it was chosen on.  This checks that with a run's own
out-of-fold predictions as the population: every round draws as many positive patients as the pool
holds, with replacement, chooses the threshold on them exactly as a run does, and reads the
population's image-level sensitivity there.  No model is trained; only the patient sampling is
tested, not the move to the deployed members (``threshold_transfer.md``) nor a test split's
spread (``sensitivity_spread.py``).

Example::

    python bench/threshold_coverage.py runs/std31cv runs/std32cv --rounds 300
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_output_options, emit  # noqa: E402
from sensitivity_spread import out_of_fold  # noqa: E402


def coverage(scores, patients, *, target: float, confidence: float = 0.9, rounds: int = 200, seed: int = 0,
             rule: str = "patient_lower_bound") -> dict:
    """Re-choose the threshold on patient resamples of the positive rows and score it on all of them.

    Args:
        scores: P(positive) of the population's positive images [N].
        patients: patient id per image [N].
        target: the sensitivity target.
        confidence, rule: as in :func:`histoedge.training.thresholds.select_threshold`.
        rounds: resamples of the patients; ``seed`` fixes them.

    Returns:
        ``{"thresholds", "population_sensitivity"}`` per round, ``"share_below_target"``,
        ``"mean_population_sensitivity"``, ``"patients"`` and ``"images"``.

    Example::

        coverage(p_oof[y_oof == 1], patients_oof[y_oof == 1], target=0.95, rounds=50)["share_below_target"]
    """
    from histoedge.training.thresholds import select_threshold

    scores = np.asarray(scores, dtype=np.float64)
    ids, owner = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(owner == g) for g in range(len(ids))]
    rng = np.random.default_rng(seed)
    thresholds, population = [], []
    for r in range(rounds):
        drawn = rng.integers(0, len(ids), len(ids))
        rows = np.concatenate([members[g] for g in drawn])
        # a patient drawn twice is two patients in the resample, as in a new cohort
        labels = np.concatenate([np.full(len(members[g]), k) for k, g in enumerate(drawn)])
        chosen = select_threshold(rule, np.ones(len(rows), dtype=int), scores[rows], target=target,
                                  patients=labels.tolist(), confidence=confidence, seed=seed + 1 + r)
        thresholds.append(chosen["threshold"])
        population.append(float(np.mean(scores >= chosen["threshold"])))
    population = np.array(population)
    return {"patients": int(len(ids)), "images": int(scores.size), "thresholds": thresholds,
            "population_sensitivity": population.tolist(),
            "share_below_target": float(np.mean(population < target - 1e-12)),
            "mean_population_sensitivity": float(population.mean())}


def _positives(run: Path) -> tuple[np.ndarray, list[str], float, float]:
    """The run's out-of-fold positive scores and their patients, its target and confidence."""
    ensemble, _, patient, index, labels, scores = out_of_fold(run)
    rule = json.loads((run / "metrics.json").read_text())["threshold_rule"]
    positive = labels == (ensemble.positive_class or 1)
    patients = [patient[i] for i in index[positive]]
    return scores[positive], patients, float(rule["target"]), float(rule.get("confidence", 0.9))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished cross-fitted run directories")
    parser.add_argument("--rounds", type=int, default=200, help="patient resamples per run")
    add_output_options(parser)
    args = parser.parse_args(argv)
    results, lines = [], ["| run | positive patients / images | nominal share below target | share below target "
                          "| mean population sensitivity at the threshold | thresholds (10th-90th percentile) |",
                          "|---|---|---|---|---|---|"]
    for run in args.runs:
        scores, patients, target, confidence = _positives(run)
        result = {"run": run.name, "target": target, "confidence": confidence,
                  **coverage(scores, patients, target=target, confidence=confidence, rounds=args.rounds)}
        low, high = np.percentile(result["thresholds"], [10, 90])
        lines.append(f"| {run.name} | {result['patients']} / {result['images']} | {1 - confidence:.0%} | "
                     f"{result['share_below_target']:.1%} | {result['mean_population_sensitivity']:.3f} | "
                     f"{low:.3f}-{high:.3f} |")
        results.append(result)
    emit(args, "\n".join(lines) + "\n", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
