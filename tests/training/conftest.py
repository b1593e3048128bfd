"""Fixtures for the training tests: tiny image folders and a finished run without training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_image_folder(root: Path, classes=("benign", "malignant"), per_class=(20, 28), size=32, seed=0) -> Path:
    """An ImageFolder tree whose classes differ in colour and blob density (easy to learn).

    Each image name carries a patient id (``p<k>``) so patient grouping has something to group.
    """
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(zip(classes, per_class)):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = np.full((size, size, 3), (230, 200 - 40 * c, 220), dtype=np.uint8)
            for _ in range(3 + 6 * c):
                center = tuple(int(v) for v in rng.integers(0, size, 2))
                cv2.circle(image, center, int(rng.integers(2, 5)), (120 - 30 * c, 40, 140), -1)
            image = np.clip(image.astype(int) + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{name}_p{i % 6}_{i:03d}.png"), image)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "data")


def make_fake_run(run_dir: Path, classes=("benign", "malignant"), members=("a", "b"), n_val=40, n_test=50,
                  seed=0) -> Path:
    """A run directory with everything the report reads, built from random predictions."""
    from histoedge.training.ensemble import choose_threshold, fit_ensemble
    from histoedge.training.report import save_predictions
    from histoedge.training.run import score_model

    rng = np.random.default_rng(seed)
    classes, members = list(classes), list(members)
    k = len(classes)
    val_y, test_y = rng.integers(0, k, n_val), rng.integers(0, k, n_test)

    def probs(y, strength):
        logits = rng.normal(size=(len(y), k)) + strength * np.eye(k)[y]
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    val = {m: probs(val_y, 1.5 + i) for i, m in enumerate(members)}
    test = {m: probs(test_y, 1.5 + i) for i, m in enumerate(members)}
    run_dir.mkdir(parents=True, exist_ok=True)
    test_patients = [f"test-p{j % 5}" for j in range(n_test)]  # as in the splits.csv written below
    models = {}
    for i, m in enumerate(members):
        threshold = choose_threshold(val_y, val[m][:, 1]) if k == 2 else None
        models[m] = score_model(m, val_y, val[m], test_y, test[m], threshold=threshold, classes=classes, rounds=50,
                                test_patients=test_patients)
        member_dir = run_dir / "members" / m
        member_dir.mkdir(parents=True)
        with open(member_dir / "history.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "accuracy", "loss", "val_accuracy", "val_loss"])
            for e in range(3):
                writer.writerow([e, 0.6 + 0.1 * e, 0.7 - 0.1 * e, 0.55 + 0.1 * e, 0.75 - 0.1 * e])
    method = "stacking" if len(members) > 1 else "single"
    ensemble = fit_ensemble(method, members=members, val_probs=[val[m] for m in members], val_labels=val_y,
                            classes=classes, image_size=32)
    val["ensemble"] = ensemble.predict_proba([val[m] for m in members])
    test["ensemble"] = ensemble.predict_proba([test[m] for m in members])
    models["ensemble"] = score_model("ensemble", val_y, val["ensemble"], test_y, test["ensemble"],
                                     threshold=ensemble.threshold, classes=classes, rounds=50,
                                     test_patients=test_patients)
    save_predictions(run_dir, classes=classes, members=members, val_labels=val_y, test_labels=test_y,
                     val=val, test=test)
    ensemble.save(run_dir / "ensemble.json")
    with open(run_dir / "splits.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient", "split"])
        for split, labels in (("train", rng.integers(0, k, 100)), ("val", val_y), ("test", test_y)):
            for j, y in enumerate(labels):
                writer.writerow([f"/d/{split}{j}.png", classes[y], f"{split}-p{j % 5}", split])
    (run_dir / "unreadable.csv").write_text("path,reason\n/d/bad.png,cannot decode\n")
    (run_dir / "duplicates.csv").write_text("path,duplicate_of\n")
    metrics = {"classes": classes, "method": method, "members": members, "image_size": 32,
               "positive_class": ensemble.positive_class, "threshold": ensemble.threshold,
               "target_sensitivity": 0.95, "models": models}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def fake_run():
    """The :func:`make_fake_run` factory."""
    return make_fake_run


@pytest.fixture
def folder_factory():
    """The :func:`write_image_folder` factory."""
    return write_image_folder
