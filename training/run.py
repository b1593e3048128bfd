"""``histoedge train``: one model or the whole ensemble, evaluated and reported in a run directory.

The order of work keeps the test split honest:

1. resolve the config, load the dataset and split it by patient, or reuse ``RUN/splits.csv`` when
   resuming (all input errors surface here, before anything is written);
2. train each member on the train split (early stopping on the validation split) into
   ``RUN/members/<recipe>/``; a member whose ``DONE`` marker exists is loaded, not retrained, so an
   interrupted run resumes where it stopped;
3. with ``ensemble.cv_folds`` = K, train every member K more times over train+validation
   (patient-grouped folds, :mod:`~histoedge.training.crossfit`) for out-of-fold predictions;
4. fit the meta-learner (on validation, or on the out-of-fold predictions) and choose each decision
   threshold on validation predictions only (:mod:`~histoedge.training.thresholds`);
5. predict the test split and score every member and the ensemble once, image- and patient-level,
   with patient-bootstrap intervals, and compare the ensemble with each member on the same patients;
6. write ``metrics.json``, ``predictions.npz``, ``ensemble.json``, plots and the report.

Example:
    >>> metrics = train_run("data/synth", "runs/r1", load_config(epochs=8, image_size=64), ensemble=True)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import yaml

from histoedge.export.ensemble_spec import ENSEMBLE_FILE
from histoedge.training.bootstrap import add_holm, cluster_ids, paired_difference
from histoedge.training.errors import RunConfigChanged, RunError
from histoedge.training.ensemble import fit_ensemble
from histoedge.training.metrics import evaluate, macro_roc_auc
from histoedge.training.patients import patient_metrics
from histoedge.training.thresholds import select_threshold, transfer_check

log = logging.getLogger(__name__)

# Config keys that only change how finished members are combined or scored; a resumed run may change them.
_RECOMBINE_ONLY = {("ensemble", "method"), ("ensemble", "target_sensitivity"), ("ensemble", "fit_vote_weights"),
                   ("ensemble", "members"), ("ensemble", "threshold_rule"), ("ensemble", "threshold_confidence"),
                   ("ensemble", "threshold_split_patients"), ("ensemble", "cv_folds"), ("ensemble", "threshold_on"),
                   ("ensemble", "threshold_transfer"), ("ensemble", "stacking_weights"), ("evaluation", "bootstrap"),
                   ("evaluation", "patient_aggregation"), ("recipe",)}
THRESHOLD_ROUNDS = 1000  # patient resamples behind the threshold's margin (independent of evaluation.bootstrap)
# Sections that only concern the distilled student: a finished run may gain (or retrain) one.
_STUDENT_ONLY = {"distill"}
_RUN_OUTPUTS = ("metrics.json", ENSEMBLE_FILE, "predictions.npz", "report.md", "report.html")
# Keys added after runs were written whose default trains exactly as the code before them did,
# so a run whose config.yaml lacks them held that value and may resume.  (training.onset is not
# here: its default changed how members train, so an older run must not mix with it.)
_ADDED_WITH_OLD_BEHAVIOUR = {("model", "kernel_initializer"): "glorot_uniform",
                             ("model", "input_scaling"): "unit"}



def _differences(old, new, where=()) -> list[str]:
    if where and where[0] in _STUDENT_ONLY:
        return []
    if where == ("recipes",) and isinstance(old, dict) and isinstance(new, dict):
        # A new recipe trains a new member beside the finished ones, which it does not change. One
        # that exists must stay as its member was trained, and stay listed, and a new one may not
        # take a built-in recipe's name: either way a finished member folder would be reused
        # under another definition of its name.
        from histoedge.training.recipes import list_recipes

        changed = [f"recipes.{name}: {old[name]!r} -> {new.get(name)!r}"
                   for name in sorted(old, key=str) if old[name] != new.get(name)]
        return changed + [f"recipes.{name}: defined over the built-in recipe of that name"
                          for name in sorted(set(new) - set(old), key=str) if name in list_recipes()]
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), where + (key,))
        return found
    if where in _RECOMBINE_ONLY or old == new:
        return []
    return [f"{'.'.join(map(str, where))}: {old!r} -> {new!r}"]


def check_resumable(run_dir: Path, config) -> None:
    """Refuse to mix runs: an existing ``config.yaml`` must match except for recombination settings."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    old = yaml.safe_load(path.read_text()) or {}
    from histoedge.training.config import TrainConfig
    for key, default in yaml.safe_load(TrainConfig().to_yaml()).items():
        old.setdefault(key, default)  # a section added after the run was written held its defaults
    for (section, key), value in _ADDED_WITH_OLD_BEHAVIOUR.items():
        if isinstance(old.get(section), dict):
            old[section].setdefault(key, value)
    changed = _differences(old, yaml.safe_load(config.to_yaml()))
    if changed:
        raise RunConfigChanged(f"{run_dir} holds a run with a different configuration "
                               f"({'; '.join(changed[:3])}); use a new --out folder or delete the old one")


def resolve_splits(run_dir: Path, dataset, config) -> dict:
    """A new patient-grouped split, or, when resuming, the one in ``RUN/splits.csv``.

    Reusing the stored split keeps a resumed run's members, meta-learner and test rows consistent
    even if the split algorithm or its defaults change between versions.

    Raises:
        RunError: the stored split does not cover exactly the dataset's images (another --data).
    """
    from histoedge.training.data import read_splits_csv, split_dataset, splits_from_rows

    path = run_dir / "splits.csv"
    if not path.is_file():
        split = config.data.split
        return split_dataset(dataset, fractions=(split.train, split.val, split.test), seed=config.seed)
    rows = read_splits_csv(path)
    if {r.path for r in rows} != {r.path for r in dataset.records} or len(rows) != len(dataset.records):
        raise RunError(f"{run_dir} was trained on a different set of images; use a new --out folder")
    log.info("resuming: using the split stored in %s", path)
    return splits_from_rows(dataset, rows)


def with_augmentation_preset(config, dataset):
    """``config`` with its augmentation resolved: an ``auto`` preset is chosen from the dataset's colours.

    The choice is logged in one line and, being part of the config, recorded in ``RUN/config.yaml``.
    """
    import copy

    from histoedge.training.data.profile import resolve_augmentation

    if config.augmentation.preset != "auto":
        log.info("augmentation preset %s (set in the config)", config.augmentation.preset)
    config = copy.deepcopy(config)
    config.augmentation = resolve_augmentation(config.augmentation, dataset.images)
    return config


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float64)


def score_model(name, val_y, val_p, test_y, test_p, *, threshold, classes, rounds: int = 1000,
                seed: int = 0, test_patients=None, aggregation: str = "mean") -> dict:
    """Validation and test metrics of one model at its threshold (and at 0.5 when binary).

    Test metrics carry ``rounds`` bootstrap intervals that resample patients (``test_patients``,
    one id or None per test image; None: images); ``patient`` holds the patient-level test
    metrics (:func:`~histoedge.training.patients.patient_metrics`).  Validation metrics have no
    intervals.
    """
    clusters = cluster_ids(test_patients, len(test_y))
    result = {"name": name, "threshold": threshold,
              "val": evaluate(val_y, val_p, threshold=threshold, classes=classes, bootstrap=0),
              "test": evaluate(test_y, test_p, threshold=threshold, classes=classes, bootstrap=rounds, seed=seed,
                               clusters=clusters)}
    if len(classes) == 2:
        result["test_at_0.5"] = evaluate(test_y, test_p, threshold=0.5, classes=classes, bootstrap=rounds, seed=seed,
                                         clusters=clusters)
    result["patient"] = patient_metrics(test_y, test_p, test_patients, threshold=threshold, aggregation=aggregation,
                                        bootstrap=rounds, seed=seed)
    return result


def _done_seconds(done: Path) -> float | None:
    try:
        return float(json.loads(done.read_text())["train_seconds"])
    except (ValueError, KeyError, TypeError):
        return None


def train_members(names, config, dataset, splits, run_dir: Path, *, verbose: int = 1, cluster=None,
                  backup_dir: Path | None = None) -> dict:
    """Train (or load, when ``DONE`` exists) each member; returns ``{name: (val_probs, test_probs, seconds)}``.

    Under a multi-worker ``cluster`` every worker trains each member the chief has not finished;
    only the chief writes, predicts and returns anything (other workers return ``{}``).
    """
    import keras

    from histoedge.training.recipes import get_recipe
    from histoedge.training.trainer import train_member

    chief = cluster is None or cluster.is_chief
    images, labels = dataset.images, dataset.labels
    out = {}
    for name in names:
        member_dir = run_dir / "members" / name
        recipe = get_recipe(name, config)
        started = time.time()
        done = member_dir / "DONE"
        finished = chief and done.is_file()
        if cluster is not None and cluster.kind == "multi-worker":
            from histoedge.training.distributed import broadcast
            finished = bool(broadcast(cluster, np.array([finished], np.int64))[0])
        train_data = (images[splits["train"]], labels[splits["train"]])
        val_data = (images[splits["val"]], labels[splits["val"]])
        if finished:
            if not chief:
                continue
            log.info("member %s: finished earlier, loading %s", name, member_dir / "model.keras")
            model = keras.models.load_model(member_dir / "model.keras", compile=False)
            seconds = _done_seconds(done)
        elif cluster is not None:
            from histoedge.training.distributed import train_member_distributed
            log.info("member %s: training (%s, %d replicas)", name, cluster.kind, cluster.replicas)
            model = train_member_distributed(
                cluster, recipe, config, train_data, val_data, dataset.classes,
                member_dir if chief else None, Path(backup_dir or run_dir / "backup") / name, verbose=verbose)
            seconds = time.time() - started
            if not chief:
                continue
        else:
            log.info("member %s: training", name)
            member_dir.mkdir(parents=True, exist_ok=True)
            model = train_member(recipe, config, train_data=train_data, val_data=val_data,
                                 classes=dataset.classes, out_dir=member_dir, verbose=verbose)
            seconds = time.time() - started
        batch = config.training.batch_size
        out[name] = (_predict(model, images[splits["val"]], batch), _predict(model, images[splits["test"]], batch),
                     seconds)
        if not done.is_file():
            done.write_text(json.dumps({"train_seconds": round(seconds, 1)}) + "\n")
        if cluster is None:  # a multi-worker strategy's collectives outlive a cleared session badly
            keras.backend.clear_session()
    return out


def _shared_splits(cluster, splits: dict | None, count: int) -> dict:
    """The chief's split, in the chief's order, on every worker (only the chief can read a
    resumed run's splits.csv; the order fixes the shuffled batches)."""
    from histoedge.training.distributed import broadcast

    names = ("train", "val", "test")
    sizes = broadcast(cluster, np.array([len(splits[n]) if splits else 0 for n in names], np.int64))
    order = np.concatenate([splits[n] for n in names]) if splits else np.zeros(int(sizes.sum()), np.int64)
    order = broadcast(cluster, order.astype(np.int64))
    if len(order) > count:
        raise RunError("the chief's split names more images than this worker loaded; give every worker the same --data")
    return dict(zip(names, np.split(order, np.cumsum(sizes)[:2])))


def _check_same_images(cluster, dataset, splits: dict) -> None:
    """Fail when this worker's training images (after stain normalisation) differ from the chief's."""
    from histoedge.training.distributed import broadcast

    images = dataset.images[splits["train"]].astype(np.float64)
    mine = np.array([images.sum(), (images * (1 + np.arange(len(images)) % 7)[:, None, None, None]).sum()])
    if not np.array_equal(mine, broadcast(cluster, mine)):
        raise RunError(f"worker {cluster.task}: the training images differ from the chief's after loading and "
                       "stain normalisation; give every worker the same --data and histoedge version")


def train_run(data, out, config, *, ensemble: bool = False, verbose: int = 1, cluster=None,
              backup_dir: str | Path | None = None) -> dict | None:
    """Train, combine, evaluate and report; returns the content of ``RUN/metrics.json``.

    Args:
        cluster: a :class:`training.distributed.Cluster` to train the members under (None: this
            process alone).  Only its chief writes ``out``; other workers return None.
        backup_dir: where each worker keeps its per-member backup folders (default ``out/backup``).
    """
    from histoedge.training.data import load_dataset, write_splits_csv
    from histoedge.training.report import dataset_summary, save_predictions, write_report

    run_dir = Path(out)
    chief = cluster is None or cluster.is_chief
    if chief and run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a folder")
    names = list(config.ensemble.members) if ensemble else [config.recipe]
    if not names or len(set(names)) != len(names):
        raise RunError(f"ensemble.members must list distinct recipes, got {names}")
    from histoedge.training.recipes import get_recipe
    for name in names:  # unknown recipe names fail now, not after hours of training
        get_recipe(name, config)
    dataset = load_dataset(data, image_size=config.data.image_size, label=config.data.label,
                           magnification=config.data.magnification)
    config = with_augmentation_preset(config, dataset)
    if chief:
        check_resumable(run_dir, config)
    splits = resolve_splits(run_dir, dataset, config) if chief else None
    if cluster is not None and cluster.kind == "multi-worker":
        splits = _shared_splits(cluster, splits, len(dataset.labels))
    if not chief:
        import tempfile

        from histoedge.training.data.stain import normalise_dataset
        with tempfile.TemporaryDirectory() as scratch:  # the same normalisation, nothing written to --out
            normalise_dataset(config, dataset, splits["train"], Path(scratch))
        _check_same_images(cluster, dataset, splits)
        train_members(names, config, dataset, splits, run_dir, verbose=verbose, cluster=cluster,
                      backup_dir=backup_dir)
        return None

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in _RUN_OUTPUTS:  # results of an earlier attempt must not outlive a failing rerun
        (run_dir / stale).unlink(missing_ok=True)
    _atomic_write(run_dir / "config.yaml", config.to_yaml())
    dataset.write_reports(run_dir)
    write_splits_csv(run_dir / "splits.csv", dataset, splits)
    from histoedge.training.data.stain import normalise_dataset
    normalise_dataset(config, dataset, splits["train"], run_dir)  # every split, before any model sees it
    if cluster is not None and cluster.kind == "multi-worker":
        _check_same_images(cluster, dataset, splits)

    classes = list(dataset.classes)
    binary = len(classes) == 2
    target = config.ensemble.target_sensitivity
    val_y, test_y = dataset.labels[splits["val"]], dataset.labels[splits["test"]]
    patients = [r.patient for r in dataset.records]
    val_patients = [patients[i] for i in splits["val"]]
    test_patients = [patients[i] for i in splits["test"]]
    member_probs = train_members(names, config, dataset, splits, run_dir, verbose=verbose, cluster=cluster,
                                 backup_dir=backup_dir)

    # A cohort for split_lower_bound is the size of the validation split's positive patients, wherever
    # the threshold is chosen (out-of-fold predictions hold several times as many); None: the rows'.
    cohort = (config.ensemble.threshold_split_patients
              or len(set(cluster_ids(val_patients)[val_y == 1].tolist())) or None)

    def threshold_for(val_p, labels=val_y, on_patients=val_patients, data="validation"):
        if not binary:
            return None
        return {**select_threshold(config.ensemble.threshold_rule, labels, val_p[:, 1], target=target,
                                   patients=on_patients, confidence=config.ensemble.threshold_confidence,
                                   rounds=THRESHOLD_ROUNDS, seed=config.seed, split_patients=cohort),
                "chosen_on": data}

    def score(name, val_p, test_p, choice):
        return score_model(name, val_y, val_p, test_y, test_p, threshold=choice and choice["threshold"],
                           classes=classes, rounds=config.evaluation.bootstrap, seed=config.seed,
                           test_patients=test_patients, aggregation=config.evaluation.patient_aggregation)

    models = {}
    for name, (val_p, test_p, seconds) in member_probs.items():
        models[name] = score(name, val_p, test_p, threshold_for(val_p))
        models[name]["train_seconds"] = None if seconds is None else round(seconds, 1)
        _atomic_write(run_dir / "members" / name / "metrics.json", json.dumps(models[name], indent=2) + "\n")

    method = config.ensemble.method if ensemble else "single"
    val_list, test_list = [member_probs[n][0] for n in names], [member_probs[n][1] for n in names]
    combiners = {"ensemble": fit_ensemble(method, members=names, val_probs=val_list, val_labels=val_y,
                                          classes=classes, image_size=config.data.image_size, target_sensitivity=target,
                                          fit_weights=config.ensemble.fit_vote_weights,
                                          stacking_weights=config.ensemble.stacking_weights)}
    folds = config.ensemble.cv_folds if method != "single" else 0
    out_of_fold = None
    if folds:
        combiners["ensemble_validation_fit"] = combiners["ensemble"]
        combiners["ensemble"], out_of_fold = _cross_fitted(names, method, config, dataset, splits, run_dir,
                                                           verbose=verbose)
    choices, val_out, test_out = {}, {}, {}
    for key, combiner in combiners.items():
        val_out[key], test_out[key] = combiner.predict_proba(val_list), combiner.predict_proba(test_list)
        if key == "ensemble" and out_of_fold is not None and config.ensemble.threshold_on != "validation":
            pool, oof = out_of_fold
            oof_p = combiner.predict_proba([oof[n] for n in names])
            choices[key] = threshold_for(oof_p, dataset.labels[pool], [patients[i] for i in pool],
                                         "out_of_fold (train+validation)")
            if choices[key]:  # the validation rows carry both scores: does the threshold mean the same?
                at = np.searchsorted(pool, splits["val"])
                transfer = transfer_check(val_y, oof_p[at, 1], val_out[key][:, 1], threshold=choices[key]["threshold"])
                choices[key]["transfer"] = {"rule": config.ensemble.threshold_transfer, **transfer}
                if config.ensemble.threshold_transfer == "match_flag_rate":
                    choices[key].update(out_of_fold_threshold=choices[key]["threshold"],
                                        threshold=transfer["matched"]["threshold"])
        else:
            choices[key] = threshold_for(val_out[key])
        combiner.threshold = choices[key] and choices[key]["threshold"]
        models[key] = score(key, val_out[key], test_out[key], choices[key])
    combiner = combiners["ensemble"]

    extra_val, extra_test = {}, {}
    if config.distill.enabled:
        from histoedge.training.distill import STUDENT, distill_student
        val_p, test_p, seconds = distill_student(config, dataset, splits, run_dir, combiner, names,
                                                 val_out["ensemble"], verbose=verbose)
        models[STUDENT] = {**score(STUDENT, val_p, test_p, threshold_for(val_p)), "train_seconds": seconds}
        _atomic_write(run_dir / STUDENT / "metrics.json", json.dumps(models[STUDENT], indent=2) + "\n")
        extra_val, extra_test = {STUDENT: val_p}, {STUDENT: test_p}

    save_predictions(run_dir, classes=classes, members=names, val_labels=val_y, test_labels=test_y,
                     val={**{n: p[0] for n, p in member_probs.items()}, **val_out, **extra_val},
                     test={**{n: p[1] for n, p in member_probs.items()}, **test_out, **extra_test})
    combiner.save(run_dir / ENSEMBLE_FILE)
    metrics = {"data": str(Path(data).resolve()), "layout": getattr(dataset, "layout", None),
               "dataset": dataset_summary(run_dir, classes), "classes": classes, "method": method,
               "members": names, "image_size": config.data.image_size, "positive_class": combiner.positive_class,
               "threshold": combiner.threshold, "target_sensitivity": target,
               "augmentation_preset": config.augmentation.preset,
               "threshold_rule": choices["ensemble"], "ensemble_fit": f"cross_fitted_{folds}_folds" if folds else
               "validation", "patient_aggregation": config.evaluation.patient_aggregation, "models": models}
    if method != "single":
        metrics.update(judge_ensemble(models, names, test_y, test_out, {n: p[1] for n, p in member_probs.items()},
                                      cluster_ids(test_patients, len(test_y)), config))
    if binary:
        metrics["operating_point"] = operating_point(models["ensemble"], choices["ensemble"])
    _atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir)
    return metrics


def _cross_fitted(names, method, config, dataset, splits, run_dir: Path, *, verbose: int):
    """The meta-learner fitted on out-of-fold predictions over train+validation (never test).

    Returns the fitted combiner and ``(pool, out_of_fold)``: the train+validation row indices and
    each member's out-of-fold probabilities of them (for the threshold, ``ensemble.threshold_on``).
    """
    from histoedge.training.crossfit import crossfit_folds, out_of_fold_predictions, write_summary

    pool = np.union1d(splits["train"], splits["val"])
    folds = crossfit_folds(dataset.labels, [r.patient for r in dataset.records], pool, config.ensemble.cv_folds,
                           seed=config.seed)
    write_summary(run_dir, folds, dataset)
    oof = out_of_fold_predictions(names, config, dataset, pool, folds, run_dir, verbose=verbose)
    np.savez_compressed(run_dir / "crossfit" / "oof.npz", index=pool, labels=dataset.labels[pool],
                        **{f"probs__{n}": p for n, p in oof.items()})
    combiner = fit_ensemble(method, members=names, val_probs=[oof[n] for n in names],
                            val_labels=dataset.labels[pool], classes=list(dataset.classes),
                            image_size=config.data.image_size, target_sensitivity=config.ensemble.target_sensitivity,
                            fit_weights=config.ensemble.fit_vote_weights,
                            stacking_weights=config.ensemble.stacking_weights)
    return combiner, (pool, oof)


def judge_ensemble(models: dict, names, test_y, ensembles_test: dict, members_test: dict, clusters, config) -> dict:
    """The ensemble against its members, fairly.

    ``selected_member``: the member with the highest validation ROC-AUC, i.e. the one a user would
    have picked without an ensemble (the fair baseline); ``best_test_member``: the best on test
    (an optimistic baseline).  ``comparisons``: test ROC-AUC of each ensemble minus each member,
    with a paired patient-bootstrap 95% interval (both scored on the same resampled patients), its
    bootstrap p-value and, against members, that p-value adjusted by Holm over the members.
    """
    def auc(split, name):
        value = models[name][split].get("roc_auc")
        return -np.inf if value is None else value

    selected = max(names, key=lambda n: auc("val", n))
    best = max(names, key=lambda n: auc("test", n))
    comparisons = []
    for key, probs in ensembles_test.items():
        others = [*names, *(["ensemble_validation_fit"] if key == "ensemble" and len(ensembles_test) > 1 else [])]
        found = []
        for other in others:
            other_probs = members_test.get(other, ensembles_test.get(other))
            diff = paired_difference(macro_roc_auc, test_y, probs, other_probs, clusters,
                                     rounds=config.evaluation.bootstrap, seed=config.seed)
            found.append({"model": key, "versus": other, "metric": "roc_auc", **diff})
        # one ensemble against all its members is a family of tests: Holm over the members
        add_holm([c for c in found if c["versus"] in names])
        comparisons += found
    return {"selected_member": {"name": selected, "rule": "highest validation ROC-AUC",
                                "val_roc_auc": models[selected]["val"].get("roc_auc"),
                                "test_roc_auc": models[selected]["test"].get("roc_auc")},
            "best_test_member": {"name": best, "test_roc_auc": models[best]["test"].get("roc_auc")},
            "comparisons": comparisons}


def operating_point(model: dict, choice: dict) -> dict:
    """Test sensitivity and specificity at the chosen threshold against the target, with intervals."""
    test, patient = model["test"], model["patient"]
    return {**choice,
            "test_sensitivity": test["recall"], "test_sensitivity_ci": test["ci"].get("recall"),
            "test_specificity": test["specificity"], "test_specificity_ci": test["ci"].get("specificity"),
            "patient_sensitivity": patient["recall"], "patient_sensitivity_ci": patient["ci"].get("recall"),
            "patient_specificity": patient["specificity"],
            "patient_specificity_ci": patient["ci"].get("specificity"),
            "target_met": test["recall"] is not None and test["recall"] >= choice["target"]}


def format_summary(metrics: dict) -> str:
    """A short plain-text table of the test metrics (at each model's chosen threshold)."""
    columns = ("accuracy", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece")
    width = max(14, *(len(name) + 2 for name in metrics["models"]))
    lines = [f"{'model':<{width}}{'thresh':>8}" + "".join(f"{c:>12}" for c in columns)]
    for name, model in metrics["models"].items():
        if name == "ensemble" and metrics.get("method") == "single":
            continue  # the same model as the one member
        test = model["test"]
        threshold = "argmax" if model["threshold"] is None else f"{model['threshold']:.3f}"
        cells = "".join(f"{'n/a' if test[c] is None else format(test[c], '.3f'):>12}" for c in columns)
        lines.append(f"{name:<{width}}{threshold:>8}{cells}")
    return "\n".join(lines)


def cli_train(args) -> int:
    """``histoedge train``: see ``histoedge train --help``."""
    from histoedge.training.config import CLI_FLAGS, load_config

    overrides = [*(args.overrides or []), *(["distill.enabled=true"] if getattr(args, "distill", False) else [])]
    config = load_config(args.config, overrides, **{name: getattr(args, name) for name in CLI_FLAGS})
    cluster = None
    if getattr(args, "distributed", None) != "off":
        from histoedge.training.distributed import cluster_from
        cluster = cluster_from(getattr(args, "distributed", None) or "auto")
    started = time.time()
    metrics = train_run(args.data, args.out, config, ensemble=args.ensemble, verbose=2 if args.quiet else 1,
                        cluster=cluster, backup_dir=getattr(args, "backup_dir", None))
    if metrics is None:
        print(f"worker {cluster.task}: members trained ({time.time() - started:.0f} s); "
              "the chief writes the run directory")
        return 0
    print(f"\nTest split ({metrics['dataset']['per_split'].get('test', {}).get('n', '?')} images), "
          f"{metrics['method']} of {', '.join(metrics['members'])}:")
    print(format_summary(metrics))
    print(f"\nRun directory {args.out} ({time.time() - started:.0f} s): metrics.json, ensemble.json, report.html")
    return 0
