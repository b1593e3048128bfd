"""The models the benchmarks measure, built once and cached under ``bench/.cache/``.

A benchmark needs a seed-sized ensemble (four seed CNNs at 224x224 plus the stacking
meta-model) as a Keras run directory (for the seed-style endpoint) and as ONNX model
packages (for ``histoedge serve`` and raw onnxruntime).  Speed does not depend on the
weights, so the members are built untrained with ``training.models.build_cnn`` and
written in the run-directory layout; ``histoedge export`` then packages them exactly
as a user's run would be packaged.

Example::

    run = ensure_run(224)
    repo = ensure_repo(run, "seed224", "int8")    # bench/.cache/repos/seed224-int8
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bench.common import CACHE_DIR, histoedge_command, run_checked

RECIPES = ("ldam", "class_weight", "oversample", "focal")
CLASSES = ("benign", "malignant")


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, stain-coloured uint8 [n, size, size, 3] images: PNG sizes like real tiles, not noise."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, max(2, size // 12), max(2, size // 12), 3), dtype=np.uint8)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    tint = np.array([200, 120, 190], dtype=np.float32)          # pink-purple H&E palette
    for i in range(n):
        blurred = cv2.resize(coarse[i], (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        grain = rng.normal(0, 12, size=(size, size, 3))
        images[i] = np.clip(0.55 * tint + 0.45 * blurred + grain, 0, 255).astype(np.uint8)
    return images


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", image[:, :, ::-1])      # OpenCV wants BGR
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def _write_dataset(folder: Path, size: int, n: int = 48) -> list[tuple[str, int, str, str]]:
    """A few PNGs for the exporter's int8 calibration; rows of splits.csv."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(synthetic_images(n, size, seed=1)):
        label = i % 2
        path = folder / f"{CLASSES[label]}_{i:03d}.png"
        cv2.imwrite(str(path), image[:, :, ::-1])
        split = ("train", "val", "test")[i % 3]
        rows.append((str(path), label, f"p{i % 8}", split))
    return rows


def ensure_run(image_size: int, members: int = 4, *, name: str | None = None, student: bool = False) -> Path:
    """A run directory with ``members`` untrained seed CNNs (stacking ensemble when > 1).

    ``student=True``: one member, named ``student``, with the distilled student's default
    architecture (the ``distill`` config section) instead of the seed CNN.
    """
    name = name or f"run{image_size}-{'student' if student else f'm{members}'}"
    run = CACHE_DIR / "runs" / name
    if (run / "ensemble.json").exists():
        return run
    import keras

    from histoedge.training.models import CNNConfig
    from histoedge.training.models.cnn import build_cnn, channel_statistics

    tmp = run.with_name(run.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keras.utils.set_random_seed(0)
    recipes = ("student",) if student else RECIPES[:members]
    members = len(recipes)
    model_config = CNNConfig()
    if student:
        from histoedge.training.config import load_config
        from histoedge.training.distill import student_model_config

        model_config = student_model_config(load_config(None, []))
    stats = channel_statistics(synthetic_images(48, image_size, seed=1))  # the dataset written below
    for recipe in recipes:
        folder = tmp / "members" / recipe
        folder.mkdir(parents=True)
        build_cnn(model_config, len(CLASSES), image_size, stats).save(folder / "model.keras")
        (folder / "metrics.json").write_text("{}\n")
        (folder / "history.csv").write_text("epoch,loss\n")
        (folder / "DONE").write_text("")
    rows = _write_dataset(tmp / "data", image_size)
    (tmp / "splits.csv").write_text("path,label,patient,split\n" + "".join(
        f"{p},{CLASSES[lab]},{pat},{s}\n" for p, lab, pat, s in rows))
    (tmp / "unreadable.csv").write_text("path,reason\n")
    (tmp / "duplicates.csv").write_text("path,duplicate_of\n")
    (tmp / "config.yaml").write_text(f"image_size: {image_size}\nclasses: [benign, malignant]\n")
    rng = np.random.default_rng(0)
    ensemble = {
        "method": "stacking" if members > 1 else "single",
        "members": list(recipes), "classes": list(CLASSES), "image_size": image_size,
        "positive_class": 1, "threshold": 0.5, "target_sensitivity": 0.95,
        "stacking": {"coef": [rng.normal(0, 1, 2 * members).round(4).tolist()],
                     "intercept": [0.0], "multi_class": "binary"},
        "soft_vote": {"weights": [1.0 / members] * members},
    }
    (tmp / "ensemble.json").write_text(json.dumps(ensemble, indent=2) + "\n")
    (tmp / "metrics.json").write_text("{}\n")
    shutil.rmtree(run, ignore_errors=True)
    tmp.rename(run)
    # splits.csv holds absolute paths into the temporary folder: point them at the final one.
    splits = run / "splits.csv"
    splits.write_text(splits.read_text().replace(str(tmp), str(run)))
    return run


def ensure_repo(run: Path, name: str, precision: str, *, versions: int = 1) -> Path:
    """``bench/.cache/repos/<name>-<precision>-v<versions>`` holding model ``name`` exported from ``run``.

    Extra versions are copies of version 1 with the version number changed, enough to
    measure what loading several versions costs.
    """
    repo = CACHE_DIR / "repos" / f"{name}-{precision}-v{versions}"
    if (repo / name / str(versions) / "manifest.json").exists():
        return repo
    base = CACHE_DIR / "repos" / f"{name}-{precision}-v1"
    if not (base / name / "1" / "manifest.json").exists():
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        run_checked([*histoedge_command(), "export", "--run", str(run), "--repo", str(tmp),
                     "--name", name, "--precision", precision, "--version", "1",
                     # untrained members: int8's ROC-AUC check on the tiny test split means nothing
                     *(["--force"] if precision == "int8" else [])],
                    log=CACHE_DIR / f"export-{name}-{precision}.log")
        shutil.rmtree(base, ignore_errors=True)
        tmp.rename(base)
    if versions == 1:
        return base
    from histoedge.export.manifest import Manifest

    for version in range(1, versions + 1):
        target = repo / name / str(version)
        shutil.copytree(base / name / "1", target, dirs_exist_ok=True)
        data = Manifest.load(target).to_dict()
        data["version"] = version
        (target / "manifest.json").write_text(Manifest.from_dict(data).to_json())
    return repo


def onnx_path(repo: Path, name: str, version: int = 1) -> Path:
    return repo / name / str(version) / "model.onnx"
