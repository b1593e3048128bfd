"""Shared fixtures for the export tests: tiny Keras members and fake run directories."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

SIZE = 32


def tiny_model(n_classes: int = 2, seed: int = 0, sigmoid: bool = False, rescaling: bool = True):
    """A functional 32x32 CNN: Rescaling, one conv, pooling, Dense softmax (or one sigmoid unit)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inputs) if rescaling else inputs
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    if sigmoid:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(x)
    else:
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def write_images(folder: Path, n: int, seed: int) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{seed}_{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def make_run(root: Path, method: str, classes: tuple[str, ...], n_members: int) -> Path:
    """A run directory in the shared layout with real (untrained) members and a fitted meta-learner."""
    from sklearn.linear_model import LogisticRegression

    run = root / f"run_{method}_{len(classes)}"
    names = [f"recipe{i}" for i in range(n_members)]
    for i, name in enumerate(names):
        folder = run / "members" / name
        folder.mkdir(parents=True)
        tiny_model(len(classes), seed=i).save(folder / "model.keras")
        (folder / "DONE").write_text("")
    rng = np.random.default_rng(1)
    rows = []
    counts = {"train": 12, "val": 6, "test": 12}
    for split, n in counts.items():
        for k, path in enumerate(write_images(root / "images" / split, n, seed=len(rows))):
            rows.append({"path": str(path.resolve()), "label": classes[k % len(classes)],
                         "patient": f"p{k % 4}", "split": split})
    with open(run / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient", "split"])
        writer.writeheader()
        writer.writerows(rows)
    c = len(classes)
    spec = {"method": method, "members": names, "classes": list(classes), "image_size": SIZE,
            "positive_class": 1 if c == 2 else None, "threshold": 0.4 if c == 2 else None,
            "target_sensitivity": 0.95}
    if method == "stacking":
        features = rng.dirichlet(np.ones(c), size=(60, n_members)).reshape(60, -1)
        labels = np.arange(60) % c
        meta = LogisticRegression(max_iter=500).fit(features, labels)
        spec["stacking"] = {"coef": meta.coef_.tolist(), "intercept": meta.intercept_.tolist(),
                            "multi_class": "binary" if c == 2 else "multinomial"}
    if method == "soft_vote":
        weights = rng.dirichlet(np.ones(n_members))
        spec["soft_vote"] = {"weights": weights.tolist()}
    (run / "ensemble.json").write_text(json.dumps(spec))
    return run


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "stacking": make_run(root, "stacking", ("benign", "malignant"), 2),
        "soft_vote": make_run(root, "soft_vote", ("benign", "malignant"), 3),
        "single": make_run(root, "single", ("benign", "malignant"), 1),
        "multiclass": make_run(root, "stacking", ("a", "b", "c"), 2),
    }


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory) -> Path:
    """One fp32 stacking export shared by the read-only tests; returns its version directory."""
    from histoedge.export.package import export_run

    repo = tmp_path_factory.mktemp("shared_repo")
    manifest = export_run(runs["stacking"], repo, "breast")
    return repo / "breast" / str(manifest.version)


@pytest.fixture(scope="session")
def make_model():
    """The :func:`tiny_model` factory, for tests that need their own Keras model."""
    return tiny_model


@pytest.fixture(scope="session")
def make_images():
    """The :func:`write_images` helper: ``make_images(folder, n, seed) -> paths``."""
    return write_images
