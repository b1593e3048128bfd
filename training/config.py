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
from typing import Any

import yaml

from histoedge.training.errors import ConfigError



def _augment_config_class():
    from histoedge.training.data.augment import AugmentConfig

    return AugmentConfig


def _default_augmentation():
    return _augment_config_class()()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class SplitConfig:
    """Fractions of patients (or images) per split; they must sum to 1."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15


@dataclass
class DataConfig:
    """Which images to load and how big to make them."""

    image_size: int = 96
    label: str = "binary"
    magnification: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self):
        _check(self.image_size >= 8, f"data.image_size must be >= 8, got {self.image_size}")
        _check(self.label in ("binary", "subtype"),
               f"data.label must be 'binary' or 'subtype', got {self.label!r}")


@dataclass
class CNNConfig:
    """The regularised CNN. Defaults reproduce the seed's base CNN ("custom CNN model 1").

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
    """

    filters: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256])
    kernel_size: int = 3
    first_padding: str = "valid"
    block_dropout: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.4, 0.2, 0.0])
    dense_units: list[int] = field(default_factory=lambda: [256, 128])
    head_dropout: float = 0.0
    batch_norm: bool = False
    batch_norm_momentum: float = 0.9
    regularizer: str | None = None
    l1: float = 1e-4
    l2: float = 1e-4
    max_norm: float | None = None
    global_pool: bool = False
    activation: str = "relu"

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CNNConfig":
        return _build(cls, config, "model")


@dataclass
class OptimizerConfig:
    """Optimizer, learning-rate schedule and gradient clipping.

    ``schedule``: "inverse_time" (lr / (1 + decay_rate * step / decay_steps), the seed's),
    "cosine" (to ``min_lr_fraction`` * lr over ``decay_steps``; None = the whole run) or
    "constant". ``clipnorm``/``clipvalue`` clip gradients (off when None).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "inverse_time"
    decay_steps: int | None = 1000
    decay_rate: float = 1.0
    min_lr_fraction: float = 0.0
    momentum: float = 0.9
    weight_decay: float | None = None
    clipnorm: float | None = None
    clipvalue: float | None = None

    def __post_init__(self):
        _check(self.name in ("adam", "adamw", "sgd", "rmsprop"),
               f"optimizer.name must be adam, adamw, sgd or rmsprop, got {self.name!r}")
        _check(self.schedule in ("inverse_time", "cosine", "constant"),
               f"optimizer.schedule must be inverse_time, cosine or constant, got {self.schedule!r}")
        _check(self.learning_rate > 0, f"optimizer.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    patience: int = 8
    restore_best_weights: bool = True


@dataclass
class ReduceOnPlateauConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 3
    min_lr: float = 1e-6


@dataclass
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 64
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    reduce_on_plateau: ReduceOnPlateauConfig = field(default_factory=ReduceOnPlateauConfig)
    label_smoothing: float = 0.0

    def __post_init__(self):
        _check(self.epochs >= 1 and self.batch_size >= 1,
               f"training.epochs and training.batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"training.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class EnsembleConfig:
    members: list[str] = field(default_factory=lambda: ["ldam", "class_weight", "oversample", "focal"])
    method: str = "stacking"
    target_sensitivity: float = 0.95
    fit_vote_weights: bool = True

    def __post_init__(self):
        _check(self.method in ("stacking", "soft_vote"),
               f"ensemble.method must be 'stacking' or 'soft_vote', got {self.method!r}")
        _check(isinstance(self.members, list) and len(self.members) >= 1,
               f"ensemble.members must list at least one recipe, got {self.members!r}")
        _check(0.0 < self.target_sensitivity < 1.0,
               f"ensemble.target_sensitivity must be in (0, 1), got {self.target_sensitivity}")


@dataclass
class EvaluationConfig:
    bootstrap: int = 1000


@dataclass
class TrainConfig:
    """Everything a training run needs. ``recipes`` holds user-defined recipes by name."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: CNNConfig = field(default_factory=CNNConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: Any = field(default_factory=_default_augmentation)
    recipe: str = "class_weight"
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

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


# command-line keyword -> config path
_CLI_KEYS = {
    "epochs": ("training", "epochs"),
    "image_size": ("data", "image_size"),
    "batch_size": ("training", "batch_size"),
    "seed": ("seed",),
    "magnification": ("data", "magnification"),
    "label": ("data", "label"),
    "recipe": ("recipe",),
}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                **cli: Any) -> TrainConfig:
    """Resolve the configuration: defaults <- YAML file <- ``--set`` overrides <- cli keywords.

    Args:
        path: optional YAML file with any subset of the keys.
        overrides: ``"a.b=value"`` strings; values are parsed as YAML.
        **cli: explicit flags (epochs, image_size, batch_size, seed, magnification, label,
            recipe); ``None`` means the flag was not given.

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
        if name not in _CLI_KEYS:
            raise ConfigError(f"unknown option '{name}'; valid: {', '.join(sorted(_CLI_KEYS))}")
        if value is None:
            continue
        nested: Any = value
        for part in reversed(_CLI_KEYS[name]):
            nested = {part: nested}
        merged = _merge_checked(merged, nested)
    return TrainConfig.from_dict(merged)


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
