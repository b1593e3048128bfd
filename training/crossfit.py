"""Cross-fitted stacking: out-of-fold member predictions from patient-grouped K-fold training.

The validation-fitted meta-learner sees one small validation split (a dozen patients on BreakHis
sized data).  Cross-fitting trains every member K more times over train+validation, grouped by
patient and stratified by class (scikit-learn's ``StratifiedGroupKFold``): fold k trains on the
other folds and predicts fold k, so every train+validation image gets a prediction from a model
that never saw its patient.  The meta-learner is fitted on those out-of-fold predictions (K times
the rows of the validation split) and then applied to the run's members, as in scikit-learn's
``StackingClassifier``.  The test split is never part of any fold.

Early stopping inside a fold monitors an inner, patient-grouped sixth of the fold's training
patients, never the held-out fold, so the held-out predictions stay out of sample.

Example::

    folds = crossfit_folds(dataset.labels, patients, pool, k=5, seed=0)
    oof = out_of_fold_predictions(["ldam", "focal"], config, dataset, pool, folds, run_dir)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoedge.training.bootstrap import cluster_ids
from histoedge.training.errors import RunError

log = logging.getLogger(__name__)

INNER_SPLITS = 6  # one sixth of a fold's training patients watches early stopping


@dataclass(frozen=True)
class Fold:
    """Dataset indices of one fold: ``fit`` trains, ``stop`` early-stops, ``held_out`` is predicted."""

    index: int
    fit: np.ndarray
    stop: np.ndarray
    held_out: np.ndarray


def _grouped_split(labels, groups, n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise RunError(f"cross-fitting needs at least {n_splits} patients in a split, found {n_groups}; "
                       "lower ensemble.cv_folds")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def crossfit_folds(labels, patients, pool, k: int, seed: int = 0) -> list[Fold]:
    """Patient-grouped, class-stratified K folds over the dataset indices ``pool`` (train+validation).

    Args:
        labels: labels of the whole dataset [N].
        patients: patient id per image of the whole dataset (None entries: own patient), or None.
        pool: the dataset indices to fold (never the test split).
        k: number of folds (>= 2).
        seed: shuffling seed.

    Raises:
        RunError: too few patients, or a fold without every class.
    """
    labels, pool = np.asarray(labels), np.asarray(pool, dtype=np.int64)
    groups = cluster_ids(None if patients is None else [patients[i] for i in pool], len(pool))
    n_classes = len(np.unique(labels[pool]))
    folds = []
    for index, (rest, held) in enumerate(_grouped_split(labels[pool], groups, k, seed)):
        inner = _grouped_split(labels[pool][rest], groups[rest], min(INNER_SPLITS, len(np.unique(groups[rest]))),
                               seed + 1 + index)
        # the first inner fold whose early-stopping part has every class (small data may need a later one)
        fit, stop = next(((f, s) for f, s in inner if len(np.unique(labels[pool][rest][s])) == n_classes), inner[0])
        fold = Fold(index, pool[rest[fit]], pool[rest[stop]], pool[held])
        for part in ("fit", "stop", "held_out"):
            if len(np.unique(labels[getattr(fold, part)])) < n_classes:
                raise RunError(f"cross-fitting fold {index}: its {part} part lacks a class; "
                               "lower ensemble.cv_folds or add patients")
        folds.append(fold)
    return folds


def out_of_fold_predictions(names, config, dataset, pool, folds: list[Fold], run_dir: Path, *,
                            verbose: int = 1) -> dict[str, np.ndarray]:
    """Train every member on every fold and predict its held-out part; ``{name: probs [len(pool), C]}``.

    Rows follow ``pool``.  Each finished fold is stored in ``RUN/crossfit/<member>/fold<k>.npz``
    (held-out indices and probabilities) and reused when a run resumes; fold models are not kept.
    """
    import keras

    from histoedge.training import trainer
    from histoedge.training.recipes import get_recipe

    pool = np.asarray(pool, dtype=np.int64)
    row = {int(i): r for r, i in enumerate(pool)}
    images, labels = dataset.images, dataset.labels
    batch = config.training.batch_size
    out = {}
    for name in names:
        recipe = get_recipe(name, config)
        probs = np.full((len(pool), len(dataset.classes)), np.nan)
        for fold in folds:
            fold_dir = Path(run_dir) / "crossfit" / name / f"fold{fold.index}"
            done = fold_dir.with_suffix(".npz")
            if done.is_file():
                with np.load(done) as stored:
                    held_out, fold_probs = stored["held_out"], stored["probs"]
                if not np.array_equal(held_out, fold.held_out):
                    raise RunError(f"{done} holds another fold; delete {Path(run_dir) / 'crossfit'} to refit")
            else:
                log.info("cross-fitting %s: fold %d of %d (%d training, %d early-stopping, %d held-out images)",
                         name, fold.index + 1, len(folds), len(fold.fit), len(fold.stop), len(fold.held_out))
                model = trainer.train_member(recipe, config, train_data=(images[fold.fit], labels[fold.fit]),
                                             val_data=(images[fold.stop], labels[fold.stop]),
                                             classes=dataset.classes, out_dir=fold_dir, verbose=verbose)
                fold_probs = np.asarray(model.predict(images[fold.held_out].astype(np.float32), batch_size=batch,
                                                      verbose=0), dtype=np.float64)
                done.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(done, held_out=fold.held_out, fit=fold.fit, stop=fold.stop, probs=fold_probs)
                (fold_dir / "model.keras").unlink(missing_ok=True)
                keras.backend.clear_session()
            probs[[row[int(i)] for i in fold.held_out]] = fold_probs
        if np.isnan(probs).any():
            raise RunError(f"cross-fitting {name}: some train+validation images got no out-of-fold prediction")
        out[name] = probs
    return out


def write_summary(run_dir: Path, folds: list[Fold], dataset) -> None:
    """``RUN/crossfit/folds.json``: the images of every fold part, by path, for auditing."""
    paths = [r.path for r in dataset.records]
    summary = [{"fold": f.index, **{part: [paths[i] for i in getattr(f, part)] for part in ("fit", "stop", "held_out")}}
               for f in folds]
    target = Path(run_dir) / "crossfit" / "folds.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary) + "\n")
