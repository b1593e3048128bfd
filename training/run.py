"""``histoedge train``: one model or the whole ensemble, evaluated and reported in a run directory.

The order of work keeps the test split honest:

1. resolve the config, load the dataset and split it by patient, or reuse ``RUN/splits.csv`` when
   resuming (all input errors surface here, before anything is written);
2. train each member on the train split (early stopping on the validation split) into
   ``RUN/members/<recipe>/``; a member whose ``DONE`` marker exists is loaded, not retrained, so an
   interrupted run resumes where it stopped;
3. fit the meta-learner and choose each decision threshold on validation predictions only;
4. predict the test split and score every member and the ensemble once, with bootstrap intervals;
5. write ``metrics.json``, ``predictions.npz``, ``ensemble.json``, plots and the report.

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
from histoedge.training.errors import RunError
from histoedge.training.ensemble import choose_threshold, fit_ensemble
from histoedge.training.metrics import evaluate

log = logging.getLogger(__name__)

# Config keys that only change how finished members are combined or scored; a resumed run may change them.
_RECOMBINE_ONLY = {("ensemble", "method"), ("ensemble", "target_sensitivity"), ("ensemble", "fit_vote_weights"),
                   ("ensemble", "members"), ("evaluation", "bootstrap"), ("recipe",)}
_RUN_OUTPUTS = ("metrics.json", ENSEMBLE_FILE, "predictions.npz", "report.md", "report.html")



def _differences(old, new, where=()) -> list[str]:
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
    changed = _differences(old, yaml.safe_load(config.to_yaml()))
    if changed:
        raise RunError(f"{run_dir} holds a run with a different configuration ({'; '.join(changed[:3])}); "
                       "use a new --out folder or delete the old one")


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _predict(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float64)


def score_model(name, val_y, val_p, test_y, test_p, *, threshold, classes, rounds: int = 1000,
                seed: int = 0) -> dict:
    """Validation and test metrics of one model at its threshold (and at 0.5 when binary).

    Test metrics carry ``rounds`` bootstrap intervals; validation metrics have none.
    """
    result = {"name": name, "threshold": threshold,
              "val": evaluate(val_y, val_p, threshold=threshold, classes=classes, bootstrap=0),
              "test": evaluate(test_y, test_p, threshold=threshold, classes=classes, bootstrap=rounds, seed=seed)}
    if len(classes) == 2:
        result["test_at_0.5"] = evaluate(test_y, test_p, threshold=0.5, classes=classes, bootstrap=rounds, seed=seed)
    return result


def _done_seconds(done: Path) -> float | None:
    try:
        return float(json.loads(done.read_text())["train_seconds"])
    except (ValueError, KeyError, TypeError):
        return None


def train_members(names, config, dataset, splits, run_dir: Path, *, verbose: int = 1) -> dict:
    """Train (or load, when ``DONE`` exists) each member; returns ``{name: (val_probs, test_probs, seconds)}``."""
    import keras

    from histoedge.training.recipes import get_recipe
    from histoedge.training.trainer import train_member

    images, labels = dataset.images, dataset.labels
    out = {}
    for name in names:
        member_dir = run_dir / "members" / name
        recipe = get_recipe(name, config)
        started = time.time()
        done = member_dir / "DONE"
        if done.is_file():
            log.info("member %s: finished earlier, loading %s", name, member_dir / "model.keras")
            model = keras.models.load_model(member_dir / "model.keras", compile=False)
            seconds = _done_seconds(done)
        else:
            log.info("member %s: training", name)
            member_dir.mkdir(parents=True, exist_ok=True)
            model = train_member(recipe, config, train_data=(images[splits["train"]], labels[splits["train"]]),
                                 val_data=(images[splits["val"]], labels[splits["val"]]), classes=dataset.classes,
                                 out_dir=member_dir, verbose=verbose)
            seconds = time.time() - started
        batch = config.training.batch_size
        out[name] = (_predict(model, images[splits["val"]], batch), _predict(model, images[splits["test"]], batch),
                     seconds)
        if not done.is_file():
            done.write_text(json.dumps({"train_seconds": round(seconds, 1)}) + "\n")
        keras.backend.clear_session()
    return out


def train_run(data, out, config, *, ensemble: bool = False, verbose: int = 1) -> dict:
    """Train, combine, evaluate and report; returns the content of ``RUN/metrics.json``."""
    from histoedge.training.data import load_dataset, write_splits_csv
    from histoedge.training.report import dataset_summary, save_predictions, write_report

    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} exists and is not a folder")
    check_resumable(run_dir, config)
    names = list(config.ensemble.members) if ensemble else [config.recipe]
    if not names or len(set(names)) != len(names):
        raise RunError(f"ensemble.members must list distinct recipes, got {names}")
    from histoedge.training.recipes import get_recipe
    for name in names:  # unknown recipe names fail now, not after hours of training
        get_recipe(name, config)
    dataset = load_dataset(data, image_size=config.data.image_size, label=config.data.label,
                           magnification=config.data.magnification)
    splits = resolve_splits(run_dir, dataset, config)

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in _RUN_OUTPUTS:  # results of an earlier attempt must not outlive a failing rerun
        (run_dir / stale).unlink(missing_ok=True)
    _atomic_write(run_dir / "config.yaml", config.to_yaml())
    dataset.write_reports(run_dir)
    write_splits_csv(run_dir / "splits.csv", dataset, splits)
    from histoedge.training.data.stain import normalise_dataset
    normalise_dataset(config, dataset, splits["train"], run_dir)  # every split, before any model sees it

    classes = list(dataset.classes)
    binary = len(classes) == 2
    target = config.ensemble.target_sensitivity
    val_y, test_y = dataset.labels[splits["val"]], dataset.labels[splits["test"]]
    member_probs = train_members(names, config, dataset, splits, run_dir, verbose=verbose)

    models = {}
    for name, (val_p, test_p, seconds) in member_probs.items():
        threshold = choose_threshold(val_y, val_p[:, 1], target) if binary else None
        models[name] = score_model(name, val_y, val_p, test_y, test_p, threshold=threshold, classes=classes,
                                   rounds=config.evaluation.bootstrap, seed=config.seed)
        models[name]["train_seconds"] = None if seconds is None else round(seconds, 1)
        _atomic_write(run_dir / "members" / name / "metrics.json", json.dumps(models[name], indent=2) + "\n")

    method = config.ensemble.method if ensemble else "single"
    combiner = fit_ensemble(method, members=names, val_probs=[member_probs[n][0] for n in names], val_labels=val_y,
                            classes=classes, image_size=config.data.image_size, target_sensitivity=target,
                            fit_weights=config.ensemble.fit_vote_weights)
    ens_val = combiner.predict_proba([member_probs[n][0] for n in names])
    ens_test = combiner.predict_proba([member_probs[n][1] for n in names])
    models["ensemble"] = score_model("ensemble", val_y, ens_val, test_y, ens_test, threshold=combiner.threshold,
                                     classes=classes, rounds=config.evaluation.bootstrap, seed=config.seed)

    save_predictions(run_dir, classes=classes, members=names, val_labels=val_y, test_labels=test_y,
                     val={**{n: p[0] for n, p in member_probs.items()}, "ensemble": ens_val},
                     test={**{n: p[1] for n, p in member_probs.items()}, "ensemble": ens_test})
    combiner.save(run_dir / ENSEMBLE_FILE)
    metrics = {"data": str(Path(data).resolve()), "layout": getattr(dataset, "layout", None),
               "dataset": dataset_summary(run_dir, classes), "classes": classes, "method": method,
               "members": names, "image_size": config.data.image_size, "positive_class": combiner.positive_class,
               "threshold": combiner.threshold, "target_sensitivity": target, "models": models}
    _atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir)
    return metrics


def format_summary(metrics: dict) -> str:
    """A short plain-text table of the test metrics (at each model's chosen threshold)."""
    columns = ("accuracy", "recall", "specificity", "f1", "roc_auc", "pr_auc", "ece")
    lines = [f"{'model':<14}{'thresh':>8}" + "".join(f"{c:>12}" for c in columns)]
    for name, model in metrics["models"].items():
        if name == "ensemble" and metrics.get("method") == "single":
            continue  # the same model as the one member
        test = model["test"]
        threshold = "argmax" if model["threshold"] is None else f"{model['threshold']:.3f}"
        cells = "".join(f"{'n/a' if test[c] is None else format(test[c], '.3f'):>12}" for c in columns)
        lines.append(f"{name:<14}{threshold:>8}{cells}")
    return "\n".join(lines)


def cli_train(args) -> int:
    """``histoedge train``: see ``histoedge train --help``."""
    from histoedge.training.config import CLI_FLAGS, load_config

    config = load_config(args.config, args.overrides, **{name: getattr(args, name) for name in CLI_FLAGS})
    started = time.time()
    metrics = train_run(args.data, args.out, config, ensemble=args.ensemble, verbose=2 if args.quiet else 1)
    print(f"\nTest split ({metrics['dataset']['per_split'].get('test', {}).get('n', '?')} images), "
          f"{metrics['method']} of {', '.join(metrics['members'])}:")
    print(format_summary(metrics))
    print(f"\nRun directory {args.out} ({time.time() - started:.0f} s): metrics.json, ensemble.json, report.html")
    return 0
