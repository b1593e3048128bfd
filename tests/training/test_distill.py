"""Distillation: config checks, the loss, and a student trained on the ensemble's training-split probabilities."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import histoedge.training.distill as distill_module
import histoedge.training.run as run_module
from histoedge.training.config import load_config
from histoedge.training.errors import ConfigError
from histoedge.training.report import load_predictions


@pytest.mark.parametrize("override, message", [
    ("distill.temperature=0", "distill.temperature must be > 0"),
    ("distill.alpha=1.5", r"distill.alpha must be in \[0, 1\]"),
    ("distill.filters=[]", "distill.filters must list at least one block"),
    ("distill.epochs=0", "distill.epochs must be >= 1"),
    ("distill.enabled=maybe", "distill.enabled must be true or false"),
    ("distill.teacher=x", "unknown config key 'distill.teacher'"),
    ("distill.teacher_views=1", "distill.teacher_views must be 0 .off. or at least 2"),
])
def test_distill_section_is_validated_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_distillation_loss_mixes_soft_and_hard_terms():
    import tensorflow as tf

    from histoedge.training.losses.distillation import DistillationLoss, pack_targets

    teacher = tf.constant([[0.8, 0.2], [0.3, 0.7]])
    student = tf.constant([[0.6, 0.4], [0.1, 0.9]])
    one_hot = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    targets = pack_targets(teacher, one_hot)
    hard = float(DistillationLoss(alpha=0.0)(targets, student))
    assert hard == pytest.approx(-np.mean(np.log([0.6, 0.9])), rel=1e-5)
    assert float(DistillationLoss(alpha=1.0, temperature=3.0)(pack_targets(teacher, one_hot), teacher)) == \
        pytest.approx(0.0, abs=1e-6)
    soft = float(DistillationLoss(alpha=1.0, temperature=1.0)(targets, student))
    kl = np.mean(np.sum(teacher.numpy() * np.log(teacher.numpy() / student.numpy()), axis=1))
    assert soft == pytest.approx(kl, rel=1e-4)


@pytest.mark.parametrize("views", [0, 2])
def test_student_learns_the_ensembles_probabilities_of_training_images_only(image_folder, tmp_path, monkeypatch,
                                                                           views):
    from histoedge.training.ensemble import Ensemble

    seen = []
    real_fit = distill_module.fit_student

    def spy(config, train, val, num_classes, out_dir, **kwargs):
        seen.append((train, val))
        return real_fit(config, train, val, num_classes, out_dir, **kwargs)

    monkeypatch.setattr(distill_module, "fit_student", spy)
    run = tmp_path / "run"
    overrides = ["model.filters=[8, 16]", "model.block_dropout=[0.0, 0.0]", "model.dense_units=[16]",
                 "evaluation.bootstrap=20", "training.early_stopping.enabled=false",
                 'ensemble.members=["class_weight", "focal"]', "distill.filters=[4, 8]",
                 "distill.dense_units=[8]", "distill.block_dropout=[0.0]", f"distill.teacher_views={views}"]
    args = argparse.Namespace(data=str(image_folder), out=str(run), config=None, ensemble=True, distill=True,
                              recipe=None, epochs=1, image_size=32, batch_size=16, seed=0, magnification=None,
                              label=None, overrides=overrides, quiet=True)
    assert run_module.cli_train(args) == 0

    (((x_train, y_train, teacher), (x_val, _, val_teacher)),) = seen
    import csv
    with open(run / "splits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    n = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert len(x_train) == len(y_train) == len(teacher) == max(1, views) * n["train"] and len(x_val) == n["val"]
    if views:  # the images themselves, then augmented copies with the same labels
        assert np.array_equal(y_train[:n["train"]], y_train[n["train"]:])
        assert not np.array_equal(x_train[:n["train"]], x_train[n["train"]:])
    # The soft targets are the ensemble's probabilities of exactly the images (or views) the student fits.
    import keras
    ensemble = Ensemble.load(run / "ensemble.json")
    member_probs = [keras.models.load_model(run / "members" / m / "model.keras", compile=False)
                    .predict(x_train.astype(np.float32), verbose=0) for m in ensemble.members]
    np.testing.assert_allclose(teacher, ensemble.predict_proba(member_probs), atol=1e-5)
    predictions = load_predictions(run)
    np.testing.assert_allclose(val_teacher, predictions["val"]["ensemble"], atol=1e-5)
    # Validated, thresholded and scored like a member, next to the members and the ensemble.
    metrics = json.loads((run / "metrics.json").read_text())
    student = metrics["models"]["student"]
    assert set(metrics["models"]) == {"class_weight", "focal", "ensemble", "student"}
    assert student["test"]["n"] == n["test"] and 0 <= student["threshold"] <= 1
    assert predictions["test"]["student"].shape == (n["test"], 2)
    assert (run / "student" / "model.keras").is_file() and (run / "student" / "metrics.json").is_file()
    assert "student" in (run / "report.md").read_text()


def test_augmented_views_start_with_the_images_and_repeat_for_a_seed():
    from histoedge.training.config import load_config
    from histoedge.training.distill import augmented_views

    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    augment = load_config(None, []).augmentation
    views = augmented_views(images, augment, 3, batch_size=2, seed=4)
    assert views.shape == (15, 16, 16, 3) and views.dtype == np.uint8
    assert np.array_equal(views[:5], images)
    assert not np.array_equal(views[5:10], images) and not np.array_equal(views[5:10], views[10:])
    assert np.array_equal(views, augmented_views(images, augment, 3, batch_size=2, seed=4))
    assert not np.array_equal(views, augmented_views(images, augment, 3, batch_size=2, seed=5))


def test_views_are_lowered_to_fit_the_memory_budget_but_never_below_two():
    from histoedge.training.distill import views_that_fit

    tiles = np.zeros((1000, 64, 64, 3), np.uint8)          # 12 MiB a view
    assert views_that_fit(8, tiles, 2048) == 8
    assert views_that_fit(8, tiles, 60) == 5                # 60 MiB hold 5 views of 12 MiB
    assert views_that_fit(8, np.zeros((5000, 224, 224, 3), np.uint8), 2048) == 2   # 718 MiB a view
    assert load_config(None, []).distill.teacher_views == 8


def test_student_standardises_with_the_statistics_of_the_images_it_fits(tmp_path):
    from histoedge.training.models.cnn import channel_statistics

    config = load_config(None, ["distill.filters=[4]", "distill.dense_units=[4]",
                                "distill.block_dropout=[0.0]", "distill.epochs=1", "augmentation.preset=none"],
                         image_size=16)
    rng = np.random.default_rng(0)
    images = rng.integers(120, 256, (12, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(12) % 2
    teacher = np.where(labels[:, None] == 1, [0.2, 0.8], [0.9, 0.1]).astype(np.float32)
    model = distill_module.fit_student(config, (images, labels, teacher), (images[:4], labels[:4], teacher[:4]),
                                       2, tmp_path, verbose=0)
    mean, std = channel_statistics(images)
    layer = model.get_layer("standardise").get_config()
    assert layer["offset"] == pytest.approx([-m / s for m, s in zip(mean, std)])
    assert layer["scale"] == pytest.approx([1 / s for s in std])
