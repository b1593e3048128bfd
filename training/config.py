"""The training configuration: nested dataclasses, loaded from defaults, YAML, ``--set`` and flags.

Precedence, lowest first: built-in defaults, the YAML file, ``--set a.b=value`` overrides (the
value is parsed as YAML), then explicit command-line keyword arguments. Unknown keys anywhere
raise :class:`ConfigError` naming the key and the valid ones.

This module imports neither TensorFlow nor Keras; the augmentation section's dataclass
(:class:`training.data.augment.AugmentConfig`) is imported only when a config is built.

Example::

    config = load_config("my.yaml", overrides=["optimizer.learning_rate=3e-4"], epochs=5)
    config.training.epochs          # 5
    print(config.to_yaml())
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from histoedge.training.config_checks import Section, setting
from histoedge.training.errors import ConfigError

# Hidden activations Keras knows by name that make sense in a CNN.
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "swish", "silu", "tanh", "leaky_relu", "mish")
# Initialisers of the hidden conv/dense kernels (model.kernel_initializer).
KERNEL_INITIALIZERS = ("glorot_uniform", "he_normal", "he_uniform")
# How the custom CNN scales raw 0..255 pixels before its first convolution.
INPUT_SCALINGS = ("unit", "standardise")
# Metrics the member trainer logs on validation data (early stopping and plateau watch one).
MONITORS = ("val_loss", "val_accuracy", "val_auc", "loss", "accuracy", "auc")



def _augment_config_class():
    from histoedge.training.data.augment import AugmentConfig

    return AugmentConfig


def _default_augmentation():
    return _augment_config_class()()


@dataclass
class SplitConfig(Section):
    """Fractions of patients (or images) per split; each in (0, 1), together 1."""

    SECTION: ClassVar[str] = "data.split"
    train: float = setting(0.7, low=0, high=1, low_open=True, high_open=True)
    val: float = setting(0.15, low=0, high=1, low_open=True, high_open=True)
    test: float = setting(0.15, low=0, high=1, low_open=True, high_open=True)

    def check(self):
        total = self.train + self.val + self.test
        self.require(abs(total - 1.0) < 1e-6,
                     f"data.split.train, data.split.val and data.split.test must sum to 1, got {total:g}")


@dataclass
class DataConfig(Section):
    """Which images to load and how big to make them."""

    SECTION: ClassVar[str] = "data"
    image_size: int = setting(96, low=8)
    label: str = setting("binary", choices=("binary", "subtype"))
    magnification: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class PreprocessConfig(Section):
    """Preprocessing applied to every image before the model, in training and in the server.

    Args:
        stain_normalisation: "none", "density", "macenko" or "reinhard" (see ``export/stain.py``); the
            reference is fitted on the training split and travels in the model package.
        reference_image: fit the reference on this image instead of the training split.
    """

    SECTION: ClassVar[str] = "preprocess"
    stain_normalisation: str = setting("none", choices=("none", "density", "macenko", "reinhard"))
    reference_image: str | None = None

    def check(self):
        if self.reference_image is not None:
            self.require(self.stain_normalisation != "none",
                         "preprocess.reference_image needs preprocess.stain_normalisation density, macenko or reinhard")
            self.require(Path(self.reference_image).is_file(),
                         f"preprocess.reference_image {self.reference_image!r} is not a file")


@dataclass
class CNNConfig(Section):
    """The regularised CNN. Defaults reproduce the seed's base CNN ("custom CNN model 1"), with
    its inputs standardised instead of divided by 255 (``input_scaling``).

    Args:
        filters: conv filters per block; its length is the depth. Each block is
            Conv(k x k) [+ BatchNorm] + activation, then MaxPool(2) while the map is >= 2 px.
        kernel_size: side of every conv kernel.
        first_padding: padding of the first conv ("valid" in the seed); later convs use "same".
        block_dropout: dropout rate after each block's pooling (one per block; shorter lists are
            padded with 0). Seed: 0.4 after block 3, 0.2 after block 4.
        dense_units: hidden dense layers of the head.
        head_dropout: dropout before every head dense layer, including the output (0 = off;
            the seed tutorials use 0.5).
        batch_norm: BatchNormalization after every conv and hidden dense layer (before ReLU).
        batch_norm_momentum: momentum of the moving statistics. 0.9, not Keras's 0.99: a run
            of a thousand images has ~16 steps an epoch, and at 0.99 the statistics used for
            validation lag so far behind that early stopping kept a constant predictor.
        regularizer: kernel regulariser on every conv/dense kernel: None, "l1", "l2" or "l1_l2".
        l1, l2: strengths of the L1 and L2 penalties.
        max_norm: if set, a MaxNorm(max_norm) kernel constraint on every conv/dense kernel.
        global_pool: GlobalAveragePooling2D instead of Flatten before the head.
        activation: hidden activation.
        kernel_initializer: initial weights of every hidden conv/dense kernel: "glorot_uniform"
            (Keras' default, the seed's) or "he_normal" / "he_uniform" (scaled for ReLU, so the
            signal keeps its size through a deep plain net).
        input_scaling: what the custom CNN does to raw 0..255 pixels first: "standardise"
            (default) subtracts each channel's mean over the member's training images and
            divides by its standard deviation (the two are fixed into the model, so export and
            serving see raw pixels as before); "unit" divides by 255, as the seed did. Centred
            inputs matter to a net without batch normalisation: tissue tiles are bright, so
            with "unit" the first layer sees mostly their common offset, and on stain-normalised
            tiles the ``class_weight`` recipe (L2 and head dropout) stayed at a constant output.
            The one departure from the seed's base CNN. Backbones bring their own preprocessing
            and ignore this key.
        backbone: "custom" (this CNN) or a Keras Applications backbone by name ("resnet50",
            "efficientnetb0", "mobilenetv3small", "densenet121"; see
            :mod:`training.models.backbones`). A backbone is followed by global average pooling
            and the head above (``head_dropout``, ``dense_units``, the kernel regulariser and
            ``max_norm`` apply to the head); ``filters`` and the other conv keys are then unused.
        weights: backbone initialisation: None / "none" (random), a path to a weights file of
            the backbone (``.h5`` or ``.weights.h5``, saved once on a machine with internet), or
            "imagenet" (only if Keras's local cache already holds the file; nothing is ever
            downloaded).
    """

    SECTION: ClassVar[str] = "model"
    filters: list[int] = setting(factory=lambda: [32, 64, 128, 256, 256], low=1, each=True)
    kernel_size: int = setting(3, low=1)
    first_padding: str = setting("valid", choices=("valid", "same"))
    block_dropout: list[float] = setting(factory=lambda: [0.0, 0.0, 0.4, 0.2, 0.0], low=0, high=1,
                                         high_open=True, each=True)
    dense_units: list[int] = setting(factory=lambda: [256, 128], low=1, each=True)
    head_dropout: float = setting(0.0, low=0, high=1, high_open=True)
    batch_norm: bool = False
    batch_norm_momentum: float = setting(0.9, low=0, high=1, high_open=True)
    regularizer: str | None = setting(None, choices=(None, "l1", "l2", "l1_l2"))
    l1: float = setting(1e-4, low=0)
    l2: float = setting(1e-4, low=0)
    max_norm: float | None = setting(None, low=0, low_open=True)
    global_pool: bool = False
    activation: str = setting("relu", choices=ACTIVATIONS)
    kernel_initializer: str = setting("glorot_uniform", choices=KERNEL_INITIALIZERS)
    input_scaling: str = setting("standardise", choices=INPUT_SCALINGS)
    backbone: str = "custom"
    weights: str | None = None

    def check(self):
        from histoedge.training.models.registry import list_backbones

        self.require(len(self.filters) >= 1, "model.filters must list at least one block")
        names = list_backbones()
        self.require(self.backbone in names,
                     f"model.backbone must be {', '.join(names[:-1])} or {names[-1]}, got {self.backbone!r}")
        if self.weights is not None and self.weights.strip().lower() in ("", "none", "null"):
            self.weights = None
        self.require(self.weights is None or self.backbone != "custom",
                     "model.weights needs a pretrained backbone (model.backbone); the custom CNN "
                     "always starts from random weights")

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CNNConfig":
        return _build(cls, config, "model")


@dataclass
class OptimizerConfig(Section):
    """Optimizer, learning-rate schedule and gradient clipping.

    ``schedule``: "inverse_time" (lr / (1 + decay_rate * step / decay_steps), the seed's),
    "cosine" (to ``min_lr_fraction`` * lr over ``decay_steps``; None = the whole run) or
    "constant". ``clipnorm``/``clipvalue`` clip gradients (off when None).
    """

    SECTION: ClassVar[str] = "optimizer"
    name: str = setting("adam", choices=("adam", "adamw", "sgd", "rmsprop"))
    learning_rate: float = setting(1e-3, low=0, low_open=True)
    schedule: str = setting("inverse_time", choices=("inverse_time", "cosine", "constant"))
    decay_steps: int | None = setting(1000, low=1)
    decay_rate: float = setting(1.0, low=0)
    min_lr_fraction: float = setting(0.0, low=0, high=1)
    momentum: float = setting(0.9, low=0, high=1, high_open=True)
    weight_decay: float | None = setting(None, low=0)
    clipnorm: float | None = setting(None, low=0, low_open=True)
    clipvalue: float | None = setting(None, low=0, low_open=True)


@dataclass
class EarlyStoppingConfig(Section):
    SECTION: ClassVar[str] = "training.early_stopping"
    enabled: bool = True
    monitor: str = setting("val_loss", choices=MONITORS)
    patience: int = setting(8, low=0)
    restore_best_weights: bool = True


@dataclass
class ReduceOnPlateauConfig(Section):
    SECTION: ClassVar[str] = "training.reduce_on_plateau"
    enabled: bool = True
    monitor: str = setting("val_loss", choices=MONITORS)
    factor: float = setting(0.5, low=0, high=1, low_open=True, high_open=True)
    patience: int = setting(3, low=0)
    min_lr: float = setting(1e-6, low=0)


@dataclass
class OnsetConfig(Section):
    """When early stopping and plateau reduction start counting (:mod:`training.callbacks.onset`).

    Args:
        enabled: False counts from the first epoch, as plain Keras callbacks do.
        min_auc: validation ROC-AUC (macro over classes) from which the model counts as learning.
        max_wait: epochs after which counting starts anyway.
        restarts: how many times a training that has not reached ``min_auc`` by ``max_wait`` is
            ended there and started again from new initial weights (another seed); the last
            attempt runs to the end whatever it reaches.
    """

    SECTION: ClassVar[str] = "training.onset"
    enabled: bool = True
    min_auc: float = setting(0.75, low=0.5, high=1, low_open=True)
    max_wait: int = setting(10, low=0)
    restarts: int = setting(2, low=0)


@dataclass
class FineTuneConfig(Section):
    """Two-phase fine-tuning of a backbone (``model.backbone`` other than "custom").

    Phase 1 trains the head for ``head_epochs`` with the whole backbone frozen; phase 2 runs the
    remaining ``training.epochs - head_epochs`` epochs with the top ``unfreeze_layers`` layers
    of the backbone trainable at ``learning_rate_ratio`` times ``optimizer.learning_rate``.

    Args:
        head_epochs: length of phase 1 (0 skips it: the schedule starts unfrozen).
        unfreeze_layers: N, the number of backbone layers (counted from the top, as in
            ``backbone.layers``) trainable in phase 2; "all" unfreezes every layer; 0 keeps the
            backbone frozen throughout (a linear probe).
        learning_rate_ratio: phase-2 learning rate / phase-1 learning rate, in (0, 1].
        freeze_batch_norm: keep the backbone's batch-norm layers frozen in inference mode (their
            moving statistics fixed) in phase 2 too, as usual for pretrained weights. Set false
            when training from random weights, where the statistics must be learnt.
    """

    SECTION: ClassVar[str] = "training.fine_tune"
    head_epochs: int = setting(3, low=0)
    unfreeze_layers: int | str = 30
    learning_rate_ratio: float = setting(0.1, low=0, high=1, low_open=True)
    freeze_batch_norm: bool = True

    def check(self):
        self.require(self.unfreeze_layers == "all"
                     or (isinstance(self.unfreeze_layers, int) and self.unfreeze_layers >= 0),
                     f"training.fine_tune.unfreeze_layers must be an integer >= 0 or all, "
                     f"got {self.unfreeze_layers!r}")


@dataclass
class TrainingConfig(Section):
    SECTION: ClassVar[str] = "training"
    epochs: int = setting(30, low=1)
    batch_size: int = setting(64, low=1)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_on_plateau: ReduceOnPlateauConfig = field(default_factory=ReduceOnPlateauConfig)
    onset: OnsetConfig = field(default_factory=OnsetConfig)
    label_smoothing: float = setting(0.0, low=0, high=1, high_open=True)
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)


THRESHOLD_RULES = ("patient_lower_bound", "validation_point", "split_lower_bound")
THRESHOLD_DATA = ("auto", "validation", "out_of_fold")
THRESHOLD_TRANSFERS = ("none", "match_flag_rate")
STACKING_WEIGHTS = ("non_negative", "free")
PATIENT_AGGREGATIONS = ("mean", "median", "max")


@dataclass
class EnsembleConfig(Section):
    """How members are combined and where the binary decision threshold goes.

    Args:
        members: recipe names.
        method: "stacking" or "soft_vote".
        target_sensitivity: sensitivity the threshold must reach.
        fit_vote_weights: soft vote only; False gives uniform weights.
        threshold_rule: "patient_lower_bound" (the highest threshold whose patient-bootstrap lower
            bound of validation sensitivity reaches the target: a margin that grows as validation
            patients get fewer), "validation_point" (the highest threshold whose validation
            sensitivity itself reaches the target, the earlier rule) or "split_lower_bound" (the
            highest threshold at which ``threshold_confidence`` of small cohorts reach the target:
            a bound on one test split or acceptance cohort rather than on the mean, at a cost in
            specificity).
        threshold_confidence: one-sided level of that lower bound (0.9: the 10th percentile).
        threshold_split_patients: positive patients per cohort for "split_lower_bound"; 0: as many
            as the validation split holds.
        cv_folds: 0 (off) or K >= 2: fit the meta-learner on out-of-fold predictions from
            patient-grouped K-fold training over train+validation (costs K more trainings of every
            member).
        threshold_on: where the cross-fitted ensemble's threshold is chosen: "out_of_fold" (its
            out-of-fold predictions over train+validation: several times the patients of the
            validation split, so a hard patient is more likely to be among them), "validation", or
            "auto" (out_of_fold when cv_folds is set, else validation). Members and the
            validation-fitted ensemble always use validation.
        threshold_transfer: how a threshold chosen on out-of-fold predictions reaches the deployed
            members, which trained on more images and score on their own scale: "none" (as chosen)
            or "match_flag_rate" (the threshold at which the deployed ensemble flags as large a
            share of the validation images as the out-of-fold scores did; uses no labels).
        stacking_weights: "non_negative" (no member's probabilities counted against the class they
            name: a member that would be is dropped from the meta-learner and the rest refitted) or
            "free" (unconstrained logistic regression, the earlier behaviour).
    """

    SECTION: ClassVar[str] = "ensemble"
    members: list[str] = field(default_factory=lambda: ["ldam", "class_weight", "oversample", "focal"])
    method: str = setting("stacking", choices=("stacking", "soft_vote"))
    target_sensitivity: float = setting(0.95, low=0, high=1, low_open=True, high_open=True)
    fit_vote_weights: bool = True
    threshold_rule: str = setting("patient_lower_bound", choices=THRESHOLD_RULES)
    threshold_confidence: float = setting(0.9, low=0.5, high=1, high_open=True)
    threshold_split_patients: int = setting(0, low=0)
    cv_folds: int = setting(0, low=0, high=20)
    threshold_on: str = setting("auto", choices=THRESHOLD_DATA)
    threshold_transfer: str = setting("none", choices=THRESHOLD_TRANSFERS)
    stacking_weights: str = setting("non_negative", choices=STACKING_WEIGHTS)

    def check(self):
        self.require(len(self.members) >= 1, f"ensemble.members must list at least one recipe, got {self.members!r}")
        self.require(self.cv_folds != 1, "ensemble.cv_folds must be 0 (off) or from 2 to 20, got 1")
        self.require(self.threshold_on != "out_of_fold" or self.cv_folds >= 2,
                     "ensemble.threshold_on=out_of_fold needs ensemble.cv_folds >= 2")
        self.require(self.threshold_transfer == "none" or (self.cv_folds >= 2 and self.threshold_on != "validation"),
                     f"ensemble.threshold_transfer={self.threshold_transfer} carries an out-of-fold threshold over: "
                     "it needs ensemble.cv_folds >= 2 and ensemble.threshold_on other than validation")


@dataclass
class EvaluationConfig(Section):
    """Scoring.

    Args:
        bootstrap: resamples for every confidence interval (0 = none); resampling is by patient
            (cluster bootstrap) where patient ids are known, each image without one its own cluster.
        patient_aggregation: how a patient's image probabilities become the patient's: "mean",
            "median" or "max".
    """

    SECTION: ClassVar[str] = "evaluation"
    bootstrap: int = setting(1000, low=0)
    patient_aggregation: str = setting("mean", choices=PATIENT_AGGREGATIONS)


@dataclass
class DistillConfig(Section):
    """One student CNN trained on the ensemble's probabilities (``histoedge train --distill``).

    The student sees the training split only, with the members' augmentation; its targets are
    the ensemble's probabilities of those (un-augmented) images mixed with the hard labels
    (see :class:`training.losses.distillation.DistillationLoss`). Validation, threshold and
    test scoring are those of any member.

    Args:
        enabled: train the student after the ensemble.
        temperature: softening temperature T of the soft term.
        alpha: weight of the soft (ensemble) term; 1 - alpha weighs the hard labels.
        filters, dense_units, global_pool, block_dropout: the student's architecture (the rest
            of ``model`` is shared with the members). Default Conv 16-32-64-64, global average
            pooling, Dense 64 (65k parameters): in ``bench/bench_student.py`` its int8 graph ran
            at 15x (batch 1) and 7x (batch 16) the int8 4-member ensemble's throughput at 224 px;
            the seed's Flatten-Dense head alone holds 2.4M of the seed CNN's 3.4M parameters.
        epochs: student epochs (None: ``training.epochs``).
        teacher_views: K >= 2 (default 8): K views of each training image (the image itself and
            K - 1 augmented copies) are drawn once, the ensemble scores each view, and the
            student is fitted to those fixed views with their own probabilities (a teacher
            consistent with what the student sees). Each epoch then covers K times the images.
            0: every augmented view of an image is fitted to the ensemble's probabilities of the
            un-augmented image. Over three synthetic data seeds at 64 px the student's test
            ROC-AUC minus the ensemble's was -0.025/-0.009/-0.017 with 0 views,
            -0.0006/-0.0050/+0.0037 with 4 and -0.0033/-0.0018/+0.0019 with 8.
        view_memory_mb: the views are held in memory as uint8; K is lowered (to 2 at least, with
            a warning) so that they fit in this many MB.
    """

    SECTION: ClassVar[str] = "distill"
    enabled: bool = False
    temperature: float = setting(2.0, low=0, low_open=True)
    alpha: float = setting(0.9, low=0, high=1)
    filters: list[int] = setting(factory=lambda: [16, 32, 64, 64], low=1, each=True)
    dense_units: list[int] = setting(factory=lambda: [64], low=1, each=True)
    global_pool: bool = True
    block_dropout: list[float] = setting(factory=lambda: [0.0, 0.0, 0.2, 0.2], low=0, high=1,
                                         high_open=True, each=True)
    epochs: int | None = setting(None, low=1)
    teacher_views: int = setting(8, low=0)
    view_memory_mb: int = setting(2048, low=1)

    def check(self):
        self.require(len(self.filters) >= 1, "distill.filters must list at least one block")
        self.require(self.teacher_views != 1, "distill.teacher_views must be 0 (off) or at least 2")


@dataclass
class TrainConfig:
    """Everything a training run needs. ``recipes`` holds user-defined recipes by name."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: CNNConfig = field(default_factory=CNNConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: Any = field(default_factory=_default_augmentation)
    recipe: str = "class_weight"
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "augmentation":
                out[f.name] = _augmentation_to_dict(value)
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "TrainConfig":
        return _build(cls, data or {}, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _augmentation_to_dict(value: Any) -> dict[str, Any]:
    if hasattr(value, "get_config"):
        return dict(value.get_config())
    return dataclasses.asdict(value)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses and checking keys."""
    if isinstance(data, cls):
        return copy.deepcopy(data)
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where or 'root'}' must be a mapping, got {data!r}")
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: "
                          f"{', '.join(sorted(types))}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kind = types[name]
        if cls is TrainConfig and name == "augmentation":
            kwargs[name] = _build_augmentation(value, path)
        elif dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, path)
        elif cls is TrainConfig and name == "recipes":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError("'recipes' must map recipe names to mappings")
            kwargs[name] = copy.deepcopy(value)
        else:
            kwargs[name] = copy.deepcopy(value)
    return cls(**kwargs)


def _build_augmentation(value: Any, where: str):
    augment_cls = _augment_config_class()
    if isinstance(value, augment_cls):
        return copy.deepcopy(value)
    if not isinstance(value, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {value!r}")
    valid = {f.name for f in dataclasses.fields(augment_cls)}
    unknown = sorted(set(value) - valid)
    if unknown:
        raise ConfigError(f"unknown config key '{where}.{unknown[0]}'; valid keys here: "
                          f"{', '.join(sorted(valid))}")
    merged = {**_augmentation_to_dict(augment_cls()), **value}
    if hasattr(augment_cls, "from_config"):
        return augment_cls.from_config(merged)
    return augment_cls(**merged)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overrides`` merged in; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"a.b.c=value"`` into ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. training.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@dataclass(frozen=True)
class CliFlag:
    """A ``histoedge train`` flag that sets one config key (the one list of them).

    ``training/cli.py`` builds the flags from :data:`CLI_FLAGS`, ``cli_train`` passes them to
    :func:`load_config` by name, and :func:`load_config` maps them to their keys.
    """

    key: tuple[str, ...]
    type: type
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def default(self) -> Any:
        """The key's built-in default, read from the dataclass fields (nothing is instantiated)."""
        cls: Any = TrainConfig
        for part in self.key:
            f = next(f for f in dataclasses.fields(cls) if f.name == part)
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[part]):
                cls = typing.get_type_hints(cls)[part]
            else:
                return f.default
        return None


CLI_FLAGS: dict[str, CliFlag] = {
    "epochs": CliFlag(("training", "epochs"), int, "training epochs per member"),
    "image_size": CliFlag(("data", "image_size"), int, "model input size in pixels"),
    "batch_size": CliFlag(("training", "batch_size"), int, "images per training step"),
    "seed": CliFlag(("seed",), int, "random seed of the split, the members and the meta-learner"),
    "magnification": CliFlag(("data", "magnification"), str, "BreakHis only: keep one magnification, e.g. 40X"),
    "label": CliFlag(("data", "label"), str, "BreakHis only: benign/malignant or the 8 subtypes",
                     ("binary", "subtype")),
    "recipe": CliFlag(("recipe",), str, "recipe to train when not training the ensemble"),
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **cli: Any) -> TrainConfig:
    """Resolve the configuration: defaults <- YAML file <- ``--set`` overrides <- cli keywords.

    Args:
        path: optional YAML file with any subset of the keys.
        overrides: ``"a.b=value"`` strings; values are parsed as YAML.
        **cli: explicit flags, named as in :data:`CLI_FLAGS`; ``None`` means the flag was
            not given.

    Example::

        load_config(None, ["model.batch_norm=true"], epochs=3).training.epochs  # 3
    """
    merged = TrainConfig().to_dict()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        merged = _merge_checked(merged, loaded or {})
    for text in overrides or []:
        merged = _merge_checked(merged, parse_override(text))
    for name, value in cli.items():
        if name not in CLI_FLAGS:
            raise ConfigError(f"unknown option '{name}'; valid: {', '.join(sorted(CLI_FLAGS))}")
        if value is None:
            continue
        nested: Any = value
        for part in reversed(CLI_FLAGS[name].key):
            nested = {part: nested}
        merged = _merge_checked(merged, nested)
    config = TrainConfig.from_dict(merged)
    _check_recipes(config)
    return config


def _check_recipes(config: TrainConfig) -> None:
    """Resolve every recipe the run may use, so a bad recipe value fails here, not mid-run."""
    from histoedge.training.recipes import get_recipe

    for name in dict.fromkeys([config.recipe, *config.ensemble.members, *config.recipes]):
        get_recipe(name, config).resolve(config)


def _merge_checked(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    # Replacing a whole section with a scalar would hide a typo: reject it here.
    _check_shapes(base, overrides, "")
    return deep_merge(base, overrides)


def _check_shapes(base: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    for key, value in overrides.items():
        path = f"{where}.{key}" if where else key
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'; valid keys here: "
                              f"{', '.join(sorted(base))}")
        if isinstance(base[key], dict) and base[key] and not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' is a section; set its keys, e.g. "
                              f"{path}.{next(iter(base[key]))}=...")
        if isinstance(value, dict) and isinstance(base[key], dict) and path != "recipes":
            _check_shapes(base[key], value, path)
