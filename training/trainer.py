"""Train one ensemble member from a recipe: imbalance strategy, model, loss, schedule, callbacks.

A backbone model (``model.backbone``) trains in two phases (:mod:`training.finetune`).

Example::

    from histoedge.training.config import load_config
    from histoedge.training.recipes import get_recipe
    from histoedge.training.trainer import train_member

    config = load_config(epochs=5, image_size=64)
    model = train_member(get_recipe("ldam", config), config, (x_train, y_train), (x_val, y_val),
                         ["benign", "malignant"], Path("runs/r1/members/ldam"))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from histoedge.training.config import ConfigError, TrainConfig
from histoedge.training.recipes.base import Recipe

log = logging.getLogger(__name__)


def _check_split(name: str, data, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data
    images, labels = np.asarray(images), np.asarray(labels).astype("int64").reshape(-1)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ConfigError(f"{name} images must be [N, S, S, 3], got shape {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise ConfigError(f"{name} split has {len(images)} images and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"{name} labels must be class indices in [0, {num_classes})")
    return images, labels


def member_seed(seed: int, recipe_name: str) -> int:
    """The random seed of one ensemble member: the run's seed mixed with the recipe's name.

    Members that share an architecture would otherwise start from identical weights and see
    identical batches, which makes them agree more and the ensemble gain less.  Mixing in the
    name (not the member's position) keeps a member's seed when others are added or removed.

    Example::

        member_seed(0, "ldam") != member_seed(0, "focal")
    """
    return (int(seed) * 1_000_003 + zlib.crc32(recipe_name.encode())) % (2**31 - 1)


def train_member(recipe: Recipe, config: TrainConfig, train_data: tuple[np.ndarray, np.ndarray],
                 val_data: tuple[np.ndarray, np.ndarray], classes: list[str], out_dir: Path,
                 *, verbose: int = 1):
    """Train one member and save it.

    Args:
        recipe: what to train (:func:`training.recipes.get_recipe`).
        config: the run configuration; the recipe's overrides are merged over it.
        train_data: (uint8 images [N, S, S, 3], int labels [N]); the imbalance strategy is applied
            to these only.
        val_data: validation (images, labels); never resampled or augmented.
        classes: class names, index = label.
        out_dir: receives ``model.keras`` (standard layers only) and ``history.csv``.
        verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch).

    Returns:
        The trained ``keras.Model`` (softmax "probabilities" output), best weights restored when
        early stopping with ``restore_best_weights`` is on.
    """
    import keras

    from histoedge.training import losses
    from histoedge.training.callbacks.drw import DeferredReweighting
    from histoedge.training.callbacks.history import HistoryCSV
    from histoedge.training.callbacks.plateau import ReduceLROnPlateau
    from histoedge.training.data.pipeline import make_tf_dataset
    from histoedge.training.imbalance import apply_imbalance, class_counts
    from histoedge.training.finetune import plan_phases, set_trainable
    from histoedge.training.models.backbones import build_model
    from histoedge.training.schedules import build_optimizer, build_schedule

    cfg = recipe.resolve(config)
    num_classes = len(classes)
    x_train, y_train = _check_split("training", train_data, num_classes)
    x_val, y_val = _check_split("validation", val_data, num_classes)
    image_size = int(x_train.shape[1])
    if x_val.shape[1:] != x_train.shape[1:]:
        raise ConfigError(f"validation images {x_val.shape[1:]} differ from training {x_train.shape[1:]}")
    if image_size != cfg.data.image_size:
        log.warning("images are %d px but data.image_size is %d; building the model for %d px",
                    image_size, cfg.data.image_size, image_size)
    epochs, batch_size = int(cfg.training.epochs), int(cfg.training.batch_size)
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"training.epochs and training.batch_size must be >= 1, "
                          f"got {epochs}, {batch_size}")

    seed = member_seed(cfg.seed, recipe.name)
    keras.utils.set_random_seed(seed)
    x_train, y_train, class_weight = apply_imbalance(
        recipe.imbalance, x_train, y_train, num_classes, method=recipe.oversample_method,
        seed=seed)
    counts = class_counts(y_train, num_classes)
    log.info("member %s: %d training images per class %s", recipe.name, len(y_train), counts.tolist())

    loss = losses.get(recipe.loss, num_classes=num_classes, class_counts=counts.tolist(),
                      label_smoothing=cfg.training.label_smoothing)
    model = build_model(cfg.model, num_classes, image_size)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history = HistoryCSV(out_dir / "history.csv")
    drw_epoch = recipe.drw_start_epoch(epochs) if recipe.uses_drw else 0
    train_ds = make_tf_dataset(x_train, y_train, num_classes, batch_size=batch_size, training=True,
                               augment=cfg.augmentation, seed=seed)
    val_ds = make_tf_dataset(x_val, y_val, num_classes, batch_size=batch_size, training=False,
                             augment=None, seed=seed)
    backbone = cfg.model.backbone != "custom"
    for phase in plan_phases(cfg, backbone=backbone):
        unfrozen = set_trainable(model, phase, cfg.training.fine_tune)
        if backbone:
            log.info("member %s: phase %s, epochs %d-%d, learning rate x%g, %d backbone layers trainable",
                     recipe.name, phase.name, phase.start + 1, phase.end, phase.lr_scale, len(unfrozen))
        optimizer_config = dataclasses.replace(
            cfg.optimizer, learning_rate=cfg.optimizer.learning_rate * phase.lr_scale)
        # The schedule of each phase spans that phase only, so phase 2 starts at its own rate.
        schedule = build_schedule(optimizer_config, steps_per_epoch, phase.epochs)
        model.compile(optimizer=build_optimizer(optimizer_config, schedule), loss=loss,
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        callbacks = [history]
        plateau = None
        if cfg.training.reduce_on_plateau.enabled:
            rop = cfg.training.reduce_on_plateau
            plateau = ReduceLROnPlateau(schedule, monitor=rop.monitor, factor=rop.factor,
                                        patience=rop.patience, min_lr=rop.min_lr,
                                        verbose=int(verbose > 0))
        if recipe.uses_drw:
            callbacks.append(DeferredReweighting(loss, counts, drw_epoch, beta=recipe.drw_beta,
                                                 reset=[plateau] if plateau else []))
        if plateau is not None:
            callbacks.append(plateau)
        if cfg.training.early_stopping.enabled:
            stop = cfg.training.early_stopping
            # With DRW the loss changes at drw_epoch; only the re-weighted phase is compared, so
            # the model always gets its re-weighting stage and "best" compares like with like.
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=stop.monitor, patience=stop.patience,
                restore_best_weights=stop.restore_best_weights, start_from_epoch=drw_epoch,
                verbose=int(verbose > 0)))
        model.fit(train_ds, validation_data=val_ds, epochs=phase.end, initial_epoch=phase.start,
                  class_weight=class_weight, callbacks=callbacks, shuffle=False, verbose=verbose)
    save_model(model, out_dir / "model.keras")
    return model


def save_model(model, path: Path) -> None:
    """Save the architecture and weights only (no optimizer, no custom loss), so the file loads
    with ``keras.models.load_model(path, compile=False)`` and nothing registered."""
    import warnings

    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    with warnings.catch_warnings():
        # Keras' weight writer trips numpy 2's __array__(copy=...) deprecation; nothing to act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="__array__")
        clean.save(path)
