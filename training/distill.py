"""Distil the ensemble into one student CNN trained on the ensemble's probabilities.

The student learns from the ensemble's probabilities of the TRAINING split only: the members
predict training images, the fitted combiner (stacking or soft vote) turns those into ensemble
probabilities, and the student is fitted to them (mixed with the hard labels,
:class:`training.losses.distillation.DistillationLoss`). By default (``distill.teacher_views``
8) the augmentation is drawn once: each training image and seven augmented copies are scored
by the ensemble, and the student fits those fixed views, each to the ensemble's probability of
that view. With 0 the ensemble scores the un-augmented images and the student fits freshly
augmented views of each to its image's probability. Validation images (with the ensemble's validation probabilities as soft targets)
only drive early stopping; the threshold is then chosen on validation and the test split is
scored once, like any member. The student lands in ``RUN/student/`` (``model.keras``,
``history.csv``, ``metrics.json``, ``DONE``).

Example:
    >>> val_p, test_p, seconds = distill_student(config, dataset, splits, Path("runs/r1"), combiner,
    ...                                          ["ldam", "focal"], ensemble_val_probs)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from histoedge.training.config import CNNConfig, TrainConfig
from histoedge.training.errors import RunError

log = logging.getLogger(__name__)

STUDENT = "student"


def student_model_config(config: TrainConfig) -> CNNConfig:
    """The members' ``model`` section with the student's architecture fields."""
    d = config.distill
    return dataclasses.replace(config.model, filters=list(d.filters), dense_units=list(d.dense_units),
                               global_pool=d.global_pool, block_dropout=list(d.block_dropout))


def teacher_probabilities(run_dir: Path, names, combiner, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The ensemble's probabilities [N, C] of ``images``: each saved member predicts, the combiner combines."""
    import keras

    member_probs = []
    for name in names:
        model = keras.models.load_model(Path(run_dir) / "members" / name / "model.keras", compile=False)
        member_probs.append(np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size,
                                                     verbose=0), np.float64))
        keras.backend.clear_session()
    return combiner.predict_proba(member_probs)


def views_that_fit(requested: int, images: np.ndarray, memory_mb: int) -> int:
    """The number of views (at most ``requested``, at least 2) whose uint8 copies fit in ``memory_mb``.

    Example:
        >>> views_that_fit(8, np.zeros((5000, 224, 224, 3), np.uint8), 2048)
        2
    """
    per_view = max(1, images[:1].nbytes * len(images))
    return max(2, min(requested, int(memory_mb * 2**20 // per_view)))


def augmented_views(images: np.ndarray, augment, views: int, *, batch_size: int, seed: int = 0) -> np.ndarray:
    """``views`` copies of uint8 ``images`` [N, H, W, 3], view-major: the images, then augmented copies.

    Args:
        images: uint8 training images.
        augment: the :class:`AugmentConfig` the members trained with.
        views: copies per image, the first un-augmented.
        batch_size: images augmented per call.
        seed: the views are the same for the same seed and batch size.

    Returns:
        uint8 [views * N, H, W, 3]; rows ``v * N + i`` are views of image ``i``.
    """
    from histoedge.training.data.augment import augment_batch

    n = len(images)
    out = np.empty((views * n, *images.shape[1:]), np.uint8)
    out[:n] = images
    for view in range(1, views):
        for start in range(0, n, batch_size):
            chunk = np.asarray(images[start:start + batch_size], np.float32)
            augmented = np.asarray(augment_batch(chunk, augment, [seed, view * 1_000_003 + start]))
            out[view * n + start:view * n + start + len(chunk)] = np.clip(np.rint(augmented), 0, 255)
    return out


def distill_dataset(images, labels, teacher, num_classes: int, *, batch_size: int, training: bool,
                    augment=None, seed: int = 0):
    """``tf.data`` of ``(float images, [teacher | one-hot])``; augmented and shuffled when training.

    The teacher's probabilities belong to the un-augmented image: an augmented view keeps its
    image's target, as a hard label would.
    """
    import tensorflow as tf

    from histoedge.training.data.augment import AugmentConfig, augment_batch

    teacher = np.asarray(teacher, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    if not len(images) == len(labels) == len(teacher) or teacher.shape[1:] != (num_classes,):
        raise RunError(f"distillation needs one [C={num_classes}] teacher row per image, got "
                       f"{len(images)} images, {len(labels)} labels, teacher {teacher.shape}")

    def to_inputs(x, y, t):
        return tf.cast(x, tf.float32), tf.concat([t, tf.one_hot(y, num_classes, dtype=tf.float32)], axis=-1)

    dataset = tf.data.Dataset.from_tensor_slices((images, labels, teacher)).cache()
    if not training:
        return dataset.batch(batch_size).map(to_inputs).prefetch(tf.data.AUTOTUNE)
    config = augment if augment is not None else AugmentConfig()
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augmented(batch, seed_pair):
        x, y = to_inputs(*batch)
        return augment_batch(x, config, seed_pair), y

    return (tf.data.Dataset.zip((dataset.batch(batch_size), seeds))
            .map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def fit_student(config: TrainConfig, train, val, num_classes: int, out_dir: Path, *, verbose: int = 1,
                augment=None):
    """Train the student on ``train = (images, labels, teacher_probs)``; early stopping on ``val``.

    ``augment``: the augmentation of the training views (default ``config.augmentation``).

    Returns the trained ``keras.Model`` (softmax "probabilities" output), saved as
    ``out_dir/model.keras``.
    """
    import keras

    from histoedge.training.callbacks.history import HistoryCSV
    from histoedge.training.callbacks.plateau import ReduceLROnPlateau
    from histoedge.training.losses.distillation import DistillationLoss
    from histoedge.training.models.cnn import build_cnn, input_statistics
    from histoedge.training.schedules import build_optimizer, build_schedule
    from histoedge.training.trainer import member_seed, save_model

    d, training = config.distill, config.training
    epochs, batch = d.epochs or training.epochs, training.batch_size
    seed = member_seed(config.seed, STUDENT)
    keras.utils.set_random_seed(seed)
    images = train[0]
    student = student_model_config(config)
    model = build_cnn(student, num_classes, int(images.shape[1]), input_statistics(student, images))
    schedule = build_schedule(config.optimizer, math.ceil(len(images) / batch), epochs)
    model.compile(optimizer=build_optimizer(config.optimizer, schedule),
                  loss=DistillationLoss(temperature=d.temperature, alpha=d.alpha))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [HistoryCSV(out_dir / "history.csv")]
    if training.reduce_on_plateau.enabled:
        rop = training.reduce_on_plateau
        callbacks.append(ReduceLROnPlateau(schedule, monitor="val_loss", factor=rop.factor, patience=rop.patience,
                                           min_lr=rop.min_lr, verbose=int(verbose > 0)))
    if training.early_stopping.enabled:
        stop = training.early_stopping
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=stop.patience,
                                                       restore_best_weights=stop.restore_best_weights,
                                                       verbose=int(verbose > 0)))
    train_ds = distill_dataset(*train, num_classes, batch_size=batch, training=True,
                               augment=config.augmentation if augment is None else augment, seed=seed)
    val_ds = distill_dataset(*val, num_classes, batch_size=batch, training=False)
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=verbose)
    save_model(model, out_dir / "model.keras")
    return model


def distill_student(config: TrainConfig, dataset, splits, run_dir: Path, combiner, names, ensemble_val: np.ndarray,
                    *, verbose: int = 1) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Train (or load, when ``RUN/student/DONE`` records the same settings and teacher) the student.

    Returns ``(val_probs, test_probs, train_seconds)``.
    """
    import keras

    out_dir = Path(run_dir) / STUDENT
    done = out_dir / "DONE"
    settings = dataclasses.asdict(config.distill)
    batch = config.training.batch_size
    previous = json.loads(done.read_text()) if done.is_file() else {}
    # Reuse only a student of the same settings and the same teacher (members retrained or a
    # refitted meta-learner change the combiner's coefficients).
    teacher_config = json.loads(json.dumps(combiner.get_config()))
    if previous.get("distill") == settings and previous.get("teacher") == teacher_config:
        log.info("student: finished earlier, loading %s", out_dir / "model.keras")
        model = keras.models.load_model(out_dir / "model.keras", compile=False)
        seconds = previous.get("train_seconds")
    else:
        done.unlink(missing_ok=True)
        started = time.time()
        train_idx, val_idx = splits["train"], splits["val"]
        x_train, y_train, augment = dataset.images[train_idx], dataset.labels[train_idx], None
        views = requested = config.distill.teacher_views
        if views:
            views = views_that_fit(requested, x_train, config.distill.view_memory_mb)
            if views < requested:
                log.warning("student: %d teacher views instead of %d, so that they fit in "
                            "distill.view_memory_mb=%d", views, requested, config.distill.view_memory_mb)
            from histoedge.training.data.augment import AugmentConfig

            # Fixed views scored by the ensemble: the student's target is the teacher's answer
            # for the very pixels it sees, so the views are not augmented again.
            x_train = augmented_views(x_train, config.augmentation, views, batch_size=batch, seed=config.seed)
            y_train, augment = np.tile(y_train, views), AugmentConfig.preset_config("none")
        log.info("student: ensemble probabilities of %d training images (%d views each)", len(train_idx),
                 max(1, views))
        teacher = teacher_probabilities(run_dir, names, combiner, x_train, batch)
        model = fit_student(config, (x_train, y_train, teacher),
                            (dataset.images[val_idx], dataset.labels[val_idx], ensemble_val),
                            len(dataset.classes), out_dir, verbose=verbose, augment=augment)
        seconds = round(time.time() - started, 1)
        done.write_text(json.dumps({"train_seconds": seconds, "distill": settings, "teacher": teacher_config}) + "\n")
    predict = lambda idx: np.asarray(model.predict(dataset.images[idx].astype(np.float32), batch_size=batch,
                                                   verbose=0), np.float64)  # noqa: E731
    val_p, test_p = predict(splits["val"]), predict(splits["test"])
    keras.backend.clear_session()
    return val_p, test_p, seconds
