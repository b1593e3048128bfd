"""Does stain normalisation help when the test images come from another laboratory?

Writes the synthetic dataset twice with one seed: as is, and with ``--stain-shift`` (the
same patients, file names and tissue, stained like another lab).  Trains one model per
condition on the normal data, then scores the test patients in both stainings:

- ``none``: no normalisation, no stain jitter;
- ``strong jitter``: no normalisation, stain jitter 0.4 (the default is 0.15);
- ``density`` / ``macenko`` / ``reinhard``: normalisation (reference fitted on the training split), no jitter.

Test images of the shifted copy go through exactly what the server would do: the run's
stored reference (``RUN/stain.json``) and :meth:`StainReference.normalise`.

Usage::

    python bench/bench_stain_shift.py                 # 1200 images, 64 px, 16 epochs x 3 training seeds (~10 min on 2 idle cores)
    python bench/bench_stain_shift.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE_DIR, machine_info, md_table, quiet_env, run_checked, write_results  # noqa: E402


def histoedge_command() -> list[str]:
    return [sys.executable, "-m", "histoedge"]

# A smaller CNN than the default keeps four trainings affordable on a 2-core machine; the
# comparison is between rows, all trained alike.
MODEL = ["model.filters=[16,32,64,128]", "model.dense_units=[64]", "model.block_dropout=[0,0,0.2,0.2]"]
CONDITIONS = {
    "none": ["augmentation.stain=0.0"],
    "strong stain jitter (0.4)": ["augmentation.stain=0.4"],
    "density": ["augmentation.stain=0.0", "preprocess.stain_normalisation=density"],
    "macenko": ["augmentation.stain=0.0", "preprocess.stain_normalisation=macenko"],
    "reinhard": ["augmentation.stain=0.0", "preprocess.stain_normalisation=reinhard"],
}


def _slug(name: str) -> str:
    return name.split(" ")[0]


def test_auc(run_dir: Path, data_root: Path, shifted_root: Path) -> tuple[float, float, int]:
    """ROC-AUC of the run's model on its test patients, normal and shifted staining; fallbacks."""
    import keras
    from sklearn.metrics import roc_auc_score

    from histoedge.export.stain import load_run_reference
    from histoedge.training.data import read_splits_csv
    from histoedge.training.data.images import decode_image

    metrics = json.loads((run_dir / "metrics.json").read_text())
    classes, size = metrics["classes"], metrics["image_size"]
    positive = metrics.get("positive_class") or 1
    rows = [r for r in read_splits_csv(run_dir / "splits.csv") if r.split == "test"]
    labels = np.array([classes.index(r.label) == positive for r in rows])
    model = keras.models.load_model(run_dir / "members" / metrics["members"][0] / "model.keras", compile=False)
    reference = load_run_reference(run_dir)
    scores, fallbacks = [], 0
    for root in (data_root, shifted_root):
        paths = [root / Path(r.path).resolve().relative_to(data_root.resolve()) for r in rows]
        images = np.stack([decode_image(p.read_bytes(), size) for p in paths])
        if reference is not None:
            images, dropped = reference.normalise_batch(images)
            fallbacks += dropped if root == shifted_root else 0
        probabilities = model.predict(images.astype(np.float32), batch_size=64, verbose=0)
        scores.append(float(roc_auc_score(labels, probabilities[:, positive])))
    return scores[0], scores[1], fallbacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=CACHE_DIR / "stain_shift")
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--shift", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="trainings per condition, with training seeds seed, seed+1, ... (same data; "
                             "the seed also draws the patient split)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run side by side")
    parser.add_argument("--quick", action="store_true", help="200 images, 2 epochs")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.repeats = 200, 2, 1
    work = args.work / f"n{args.n}-s{args.size}-e{args.epochs}-shift{args.shift:g}-seed{args.seed}"
    data, shifted = work / "data", work / "shifted"
    for root, shift in ((data, 0.0), (shifted, args.shift)):
        if not root.exists():
            run_checked([*histoedge_command(), "data", "synth", "--out", str(root), "--n", str(args.n),
                         "--size", str(args.size), "--seed", str(args.seed), "--stain-shift", str(shift)])
    def train(job):
        name, repeat = job
        run_dir = work / "runs" / f"{_slug(name)}-t{repeat}"
        # Always through `train`: a finished run is reused (its member is skipped), and a run
        # cached under other defaults is refused instead of silently scored again.
        sets = [part for o in [*MODEL, *CONDITIONS[name], "evaluation.bootstrap=0"] for part in ("--set", o)]
        run_checked([*histoedge_command(), "train", "--data", str(data), "--out", str(run_dir),
                     "--epochs", str(args.epochs), "--image-size", str(args.size),
                     "--seed", str(args.seed + repeat), "--quiet", *sets],
                    log=work / f"train-{_slug(name)}-t{repeat}.log", env=quiet_env())
        return run_dir

    jobs = [(name, repeat) for name in CONDITIONS for repeat in range(args.repeats)]
    with ThreadPoolExecutor(args.jobs) as pool:
        run_dirs = dict(zip(jobs, pool.map(train, jobs)))
    results = []
    for name in CONDITIONS:
        scored = [test_auc(run_dirs[(name, repeat)], data, shifted) for repeat in range(args.repeats)]
        same, other = np.array([s[0] for s in scored]), np.array([s[1] for s in scored])
        results.append({"condition": name, "auc_same_lab": float(same.mean()),
                        "auc_shifted_lab": float(other.mean()), "drop": float((same - other).mean()),
                        "auc_same_lab_each": same.tolist(), "auc_shifted_lab_each": other.tolist(),
                        "fallbacks_shifted": int(sum(s[2] for s in scored))})
        print(f"{name:<28} same lab {same.mean():.3f}  shifted lab {other.mean():.3f}", flush=True)

    def spread(values):
        return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    table = md_table(["training condition", "test ROC-AUC, same lab: mean (range)",
                      "test ROC-AUC, shifted lab: mean (range)", "mean drop",
                      "tiles left unnormalised (shifted, all trainings)"],
                     [[r["condition"], spread(r["auc_same_lab_each"]), spread(r["auc_shifted_lab_each"]),
                       f"{r['drop']:+.3f}", r["fallbacks_shifted"]] for r in results])
    body = (f"One model (`class_weight` recipe, CNN {' '.join(MODEL)}) per row and training seed, "
            f"{args.repeats} training seeds ({args.seed}-{args.seed + args.repeats - 1}; a seed sets the "
            f"patient split, the initial weights and the augmentation, and every condition gets the same "
            f"split for a seed), trained {args.epochs} epochs on {args.n} synthetic "
            f"images at {args.size} px (data seed {args.seed}); the test patients scored as generated and "
            f"re-generated with `--stain-shift {args.shift:g}` (same tissue, another lab's stain).\n\n"
            f"Reproduce: `python bench/bench_stain_shift.py`\n\n{table}\n")
    write_results("stain_shift", {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                                  "results": results}, "Stain shift: test ROC-AUC under another lab's stain",
                  body, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
