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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass
class MemberPlan:
    """One member ready to train: data after the imbalance strategy, the model compiled with the
    recipe's loss and optimizer, and the recipe's Keras callbacks (history, deferred re-weighting,
    plateau scaling, early stopping) in the order ``fit`` runs them.

    :func:`train_member` hands these to ``fit``; the multi-worker loop
    (:mod:`training.distributed`) drives the same objects itself.
    """

    recipe: Recipe
    config: TrainConfig
    model: Any
    loss: Any
    class_weight: dict[int, float] | None
    counts: Any
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    num_classes: int
    epochs: int
    batch_size: int
    seed: int
    history: Any = None
    schedule: Any = None
    callbacks: list = field(default_factory=list)
    onset: Any = None   # the first phase's LearningOnset, when the gate is on

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train[1]) / self.batch_size)

    def datasets(self, rows: tuple[int, int] | None = None):
        """(training, validation) ``tf.data`` pipelines of global batches of ``batch_size``;
        ``rows=(first, step)`` keeps one replica's rows of each (see ``make_tf_dataset``)."""
        from histoedge.training.data import pipeline

        train = pipeline.make_tf_dataset(*self.train, self.num_classes, batch_size=self.batch_size,
                                         training=True, augment=self.config.augmentation, seed=self.seed,
                                         rows=rows)
        val = pipeline.make_tf_dataset(*self.val, self.num_classes, batch_size=self.batch_size,
                                       training=False, augment=None, seed=self.seed, rows=rows)
        return train, val

    def compile_phase(self, phase, *, verbose: int = 1, abort: bool = False) -> None:
        """Set the trainable layers, compile, and build the callbacks for one training phase.

        ``abort``: a first phase that has not started to learn by ``training.onset.max_wait`` is
        ended there (``self.onset.aborted``) instead of trained on.
        """
        import keras

        from histoedge.training.callbacks.drw import DeferredReweighting
        from histoedge.training.callbacks.onset import GatedEarlyStopping, LearningOnset
        from histoedge.training.callbacks.plateau import ReduceLROnPlateau
        from histoedge.training.finetune import set_trainable
        from histoedge.training.schedules import build_optimizer, build_schedule

        cfg, recipe = self.config, self.recipe
        unfrozen = set_trainable(self.model, phase, cfg.training.fine_tune)
        if cfg.model.backbone != "custom":
            log.info("member %s: phase %s, epochs %d-%d, learning rate x%g, %d backbone layers trainable",
                     recipe.name, phase.name, phase.start + 1, phase.end, phase.lr_scale, len(unfrozen))
        optimizer_config = dataclasses.replace(
            cfg.optimizer, learning_rate=cfg.optimizer.learning_rate * phase.lr_scale)
        # The schedule of each phase spans that phase only, so phase 2 starts at its own rate.
        self.schedule = build_schedule(optimizer_config, self.steps_per_epoch, phase.epochs)
        # ROC-AUC per class column, averaged: macro one-vs-rest, chance 0.5 whatever the priors.
        auc = keras.metrics.AUC(name="auc", multi_label=True, num_labels=self.num_classes)
        self.model.compile(optimizer=build_optimizer(optimizer_config, self.schedule), loss=self.loss,
                           metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), auc])
        drw_epoch = recipe.drw_start_epoch(self.epochs) if recipe.uses_drw else 0
        callbacks = [self.history] if self.history is not None else []
        onset = None
        if cfg.training.onset.enabled and phase.start == 0:
            onset = LearningOnset(cfg.training.onset.min_auc, cfg.training.onset.max_wait,
                                  name=f"member {recipe.name}", abort=abort)
            callbacks.append(onset)  # before the callbacks it gates
            self.onset = onset
        plateau = None
        if cfg.training.reduce_on_plateau.enabled:
            rop = cfg.training.reduce_on_plateau
            plateau = ReduceLROnPlateau(self.schedule, monitor=rop.monitor, factor=rop.factor,
                                        patience=rop.patience, min_lr=rop.min_lr,
                                        verbose=int(verbose > 0), gate=onset)
        if recipe.uses_drw:
            callbacks.append(DeferredReweighting(self.loss, self.counts, drw_epoch, beta=recipe.drw_beta,
                                                 reset=[plateau] if plateau else []))
        if plateau is not None:
            callbacks.append(plateau)
        if cfg.training.early_stopping.enabled:
            stop = cfg.training.early_stopping
            # With DRW the loss changes at drw_epoch; only the re-weighted phase is compared, so
            # the model always gets its re-weighting stage and "best" compares like with like.
            callbacks.append(GatedEarlyStopping(
                onset, monitor=stop.monitor, patience=stop.patience,
                restore_best_weights=stop.restore_best_weights, start_from_epoch=drw_epoch,
                verbose=int(verbose > 0)))
        self.callbacks = callbacks


def prepare_member(recipe: Recipe, config: TrainConfig, train_data: tuple[np.ndarray, np.ndarray],
                   val_data: tuple[np.ndarray, np.ndarray], classes: list[str],
                   out_dir: Path | None, attempt: int = 0) -> MemberPlan:
    """Check the data, apply the imbalance strategy, build the loss and the (uncompiled) model.

    Call it inside ``strategy.scope()`` to place the variables with a ``tf.distribute``
    strategy.  Arguments as :func:`train_member`; ``out_dir=None`` writes nothing (no
    ``history.csv``), as on a non-chief worker.  ``attempt`` > 0 draws other initial weights
    and batches (a restart after a start that did not learn).
    """
    import keras

    from histoedge.training import losses
    from histoedge.training.callbacks.history import HistoryCSV
    from histoedge.training.imbalance import apply_imbalance, class_counts
    from histoedge.training.models.backbones import build_model
    from histoedge.training.models.cnn import input_statistics

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

    # Statistics of the images as given, before oversampling, so every recipe sees the same scaling.
    input_stats = input_statistics(cfg.model, x_train)
    seed = member_seed(cfg.seed, recipe.name if attempt == 0 else f"{recipe.name}/attempt{attempt}")
    keras.utils.set_random_seed(seed)
    x_train, y_train, class_weight = apply_imbalance(
        recipe.imbalance, x_train, y_train, num_classes, method=recipe.oversample_method,
        seed=seed)
    counts = class_counts(y_train, num_classes)
    log.info("member %s: %d training images per class %s", recipe.name, len(y_train), counts.tolist())

    loss = losses.get(recipe.loss, num_classes=num_classes, class_counts=counts.tolist(),
                      label_smoothing=cfg.training.label_smoothing)
    model = build_model(cfg.model, num_classes, image_size, input_stats)
    history = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        history = HistoryCSV(Path(out_dir) / "history.csv")
    return MemberPlan(recipe=recipe, config=cfg, model=model, loss=loss, class_weight=class_weight,
                      counts=counts, train=(x_train, y_train), val=(x_val, y_val), num_classes=num_classes,
                      epochs=epochs, batch_size=batch_size, seed=seed, history=history)


def plan_member(recipe: Recipe, config: TrainConfig, train_data: tuple[np.ndarray, np.ndarray],
                val_data: tuple[np.ndarray, np.ndarray], classes: list[str], out_dir: Path | None,
                *, verbose: int = 1) -> MemberPlan:
    """:func:`prepare_member` compiled for its single training phase (the multi-worker loop).

    Raises:
        ConfigError: the member trains in two phases (a pretrained backbone: head, then
            fine-tuning), which the multi-worker loop does not run.
    """
    from histoedge.training.finetune import plan_phases

    plan = prepare_member(recipe, config, train_data, val_data, classes, out_dir)
    training = plan.config.training
    for section, monitor in (("early_stopping", training.early_stopping.monitor),
                             ("reduce_on_plateau", training.reduce_on_plateau.monitor)):
        if monitor.endswith("auc"):
            raise ConfigError(f"training.{section}.monitor: the multi-worker loop logs loss and accuracy "
                              f"only; watch val_loss or val_accuracy instead of {monitor}")
    phases = plan_phases(plan.config, backbone=plan.config.model.backbone != "custom")
    if len(phases) != 1:
        raise ConfigError(f"member {recipe.name}: multi-worker training runs one training phase; "
                          "a pretrained backbone fine-tunes in two (train it with --distributed mirrored or off)")
    plan.compile_phase(phases[0], verbose=verbose)
    return plan


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
        early stopping with ``restore_best_weights`` is on.  Called inside a single-process
        ``tf.distribute`` strategy's scope (``MirroredStrategy``), ``fit`` splits each global
        batch over its replicas.  A start whose validation ROC-AUC has not reached
        ``training.onset.min_auc`` by ``training.onset.max_wait`` epochs is abandoned and the
        member trained again from other initial weights, up to ``training.onset.restarts`` times.
    """
    from histoedge.training.finetune import plan_phases

    attempt = 0
    while True:
        plan = prepare_member(recipe, config, train_data, val_data, classes, Path(out_dir), attempt=attempt)
        onset = plan.config.training.onset
        restarts = onset.restarts if onset.enabled else 0
        if attempt:
            log.info("member %s: attempt %d of %d, seed %d", recipe.name, attempt + 1, restarts + 1, plan.seed)
        train_ds, val_ds = plan.datasets()
        for phase in plan_phases(plan.config, backbone=plan.config.model.backbone != "custom"):
            plan.compile_phase(phase, verbose=verbose, abort=attempt < restarts)
            plan.model.fit(train_ds, validation_data=val_ds, epochs=phase.end, initial_epoch=phase.start,
                           class_weight=plan.class_weight, callbacks=plan.callbacks, shuffle=False,
                           verbose=verbose)
            if plan.onset is not None and plan.onset.aborted:
                break
        if plan.onset is None or not plan.onset.aborted:
            break
        attempt += 1
    save_model(plan.model, Path(out_dir) / "model.keras")
    return plan.model


def save_model(model, path: Path | None):
    """Save the architecture and weights only (no optimizer, no custom loss), so the file loads
    with ``keras.models.load_model(path, compile=False)`` and nothing registered.

    Returns that plain copy (outside any ``tf.distribute`` scope); ``path=None`` saves nothing.
    """
    import warnings

    import keras

    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    with warnings.catch_warnings():
        # Keras' weight writer trips numpy 2's __array__(copy=...) deprecation; nothing to act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="__array__")
        if path is not None:
            clean.save(path)
    return clean
