"""Train a recipe again on cross-fitting folds a finished run stored, and score the held-out part.

A cross-fitted run keeps, for every member and fold, the rows it trained on, stopped early on and
held out (``RUN/crossfit/<member>/fold<k>.npz``) with the held-out probabilities. This script
trains the same recipe on the same rows with today's code and any ``--set`` overrides, and prints
the held-out ROC-AUC next to the stored one, with the per-epoch validation ROC-AUC and where
training stopped: the way to check a training change on exactly the folds that went wrong.

Example::

    python bench/refit_folds.py runs/run17 runs/data17 class_weight 1 2 --label onset
    python bench/refit_folds.py runs/run17 runs/data17 class_weight 1 2 --label plain \\
        --set training.onset.enabled=false --out bench/results/refit_folds.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def refit(run: Path, data: Path, recipe_name: str, fold: int, overrides: list[str]) -> dict:
    """Train ``recipe_name`` on ``run``'s stored fold and score its held-out rows."""
    from sklearn.metrics import roc_auc_score

    from histoedge.training import trainer
    from histoedge.training.config import load_config
    from histoedge.training.data import load_dataset
    from histoedge.training.data.stain import STAIN_FILE, normalise_dataset
    from histoedge.training.plots import read_history
    from histoedge.training.recipes import get_recipe
    from histoedge.training.run import resolve_splits, with_augmentation_preset

    config = load_config(run / "config.yaml", overrides=overrides)
    dataset = load_dataset(data, image_size=config.data.image_size, label=config.data.label,
                           magnification=config.data.magnification)
    config = with_augmentation_preset(config, dataset)
    with np.load(run / "crossfit" / recipe_name / f"fold{fold}.npz") as stored:
        fit, stop, held_out, stored_probs = (stored[k] for k in ("fit", "stop", "held_out", "probs"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        # The folds saw the run's stain-normalised images: normalise with its stored reference.
        if (run / STAIN_FILE).is_file():
            shutil.copy(run / STAIN_FILE, Path(scratch) / STAIN_FILE)
        normalise_dataset(config, dataset, resolve_splits(run, dataset, config)["train"], Path(scratch))
        images, labels = dataset.images, dataset.labels
        model = trainer.train_member(get_recipe(recipe_name, config), config, (images[fit], labels[fit]),
                                     (images[stop], labels[stop]), dataset.classes, Path(scratch), verbose=0)
        history = read_history(Path(scratch) / "history.csv")
    probs = model.predict(images[held_out].astype(np.float32), verbose=0)
    y = labels[held_out]
    return {"run": run.name, "recipe": recipe_name, "fold": fold, "overrides": overrides,
            "held_out_auc": round(float(roc_auc_score(y, probs[:, 1])), 4),
            "stored_auc": round(float(roc_auc_score(y, stored_probs[:, 1])), 4),
            "epochs": len(history["epoch"]), "seconds": round(time.perf_counter() - started),
            "val_auc": [round(auc, 3) for auc in history["val_auc"]]}


def markdown(results: list[dict], label: str) -> str:
    lines = [f"| run | recipe | stored fold | {label}: held-out ROC-AUC | stored | epochs | first epoch with validation ROC-AUC >= 0.75 |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        onset = next((i + 1 for i, auc in enumerate(r["val_auc"]) if auc >= 0.75), "never")
        lines.append(f"| {r['run']} | {r['recipe']} | fold{r['fold']}.npz | {r['held_out_auc']:.4f} | "
                     f"{r['stored_auc']:.4f} | {r['epochs']} | {onset} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory with ensemble.cv_folds set")
    parser.add_argument("data", type=Path, help="the dataset the run was trained on")
    parser.add_argument("recipe", help="the member to train again")
    parser.add_argument("folds", nargs="+", type=int, help="fold indices as stored (fold0.npz is 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="today's code", help="column name for this variant")
    parser.add_argument("--out", type=Path, help="also append the markdown here")
    parser.add_argument("--json", type=Path, help="also append one JSON line per fold here")
    args = parser.parse_args()
    results = [refit(args.run, args.data, args.recipe, fold, args.overrides) for fold in args.folds]
    text = markdown(results, args.label)
    print(text)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(text + "\n\n")
    if args.json:
        with args.json.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in results)


if __name__ == "__main__":
    main()
