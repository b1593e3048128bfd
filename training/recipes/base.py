"""A recipe: how one ensemble member is trained (loss, imbalance strategy, config overrides).

Example::

    recipe = Recipe(name="wide_focal", loss={"name": "focal", "gamma": 3.0},
                    model={"filters": [48, 96, 192, 384, 384]})
    member_config = recipe.resolve(config)    # the run config with the overrides merged in
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from histoedge.training.config import ConfigError, TrainConfig, deep_merge

IMBALANCE = ("none", "class_weight", "oversample")
OVERSAMPLE_METHODS = ("smote", "random")

# regularisation key -> config section it lives in
REGULARISATION_KEYS = {
    "block_dropout": "model", "head_dropout": "model", "batch_norm": "model",
    "batch_norm_momentum": "model",
    "regularizer": "model", "l1": "model", "l2": "model", "max_norm": "model",
    "label_smoothing": "training", "clipnorm": "optimizer", "clipvalue": "optimizer",
    "weight_decay": "optimizer",
}
DRW_KEYS = ("enabled", "start_epoch", "start_fraction", "beta")


@dataclass
class Recipe:
    """How to train one member.

    Args:
        name: registry name, also the member's folder name.
        loss: loss config, ``{"name": "crossentropy" | "focal" | "ldam", **kwargs}``.
        imbalance: "none", "class_weight" (balanced weights) or "oversample" (training split only).
        oversample_method: "smote" or "random" (for ``imbalance: oversample``).
        drw: deferred re-weighting: None = automatic (on for the LDAM loss), or a mapping with
            ``enabled``, ``start_epoch`` (0-based) or ``start_fraction`` (default 0.8), ``beta``.
        model, optimizer, training, augmentation: overrides merged over those config sections.
        regularisation: shorthand for regulariser keys wherever they live (dropout, batch_norm,
            regularizer, l1, l2, max_norm -> model; label_smoothing -> training; clipnorm,
            clipvalue, weight_decay -> optimizer).
        description: one line for reports.
    """

    name: str
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "crossentropy"})
    imbalance: str = "none"
    oversample_method: str = "smote"
    drw: dict[str, Any] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    augmentation: dict[str, Any] = field(default_factory=dict)
    regularisation: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.imbalance not in IMBALANCE:
            raise ConfigError(f"recipe '{self.name}': imbalance must be one of "
                              f"{', '.join(IMBALANCE)}, got {self.imbalance!r}")
        if self.oversample_method not in OVERSAMPLE_METHODS:
            raise ConfigError(f"recipe '{self.name}': oversample_method must be one of "
                              f"{', '.join(OVERSAMPLE_METHODS)}, got {self.oversample_method!r}")
        if not isinstance(self.loss, dict) or "name" not in self.loss:
            raise ConfigError(f"recipe '{self.name}': loss must be a mapping with a 'name'")
        unknown = sorted(set(self.regularisation) - set(REGULARISATION_KEYS))
        if unknown:
            raise ConfigError(f"recipe '{self.name}': unknown regularisation key '{unknown[0]}'; "
                              f"valid: {', '.join(sorted(REGULARISATION_KEYS))}")
        if self.drw is not None:
            bad = sorted(set(self.drw) - set(DRW_KEYS))
            if bad:
                raise ConfigError(f"recipe '{self.name}': unknown drw key '{bad[0]}'; "
                                  f"valid: {', '.join(DRW_KEYS)}")

    @property
    def uses_drw(self) -> bool:
        """Whether deferred re-weighting runs: explicit ``drw`` setting, else on for LDAM."""
        if self.drw is None:
            return self.loss.get("name") == "ldam"
        return bool(self.drw.get("enabled", True))

    def drw_start_epoch(self, epochs: int) -> int:
        """0-based epoch at which DRW switches weights (default 80% of the run, as 160/200)."""
        settings = self.drw or {}
        if settings.get("start_epoch") is not None:
            return int(settings["start_epoch"])
        fraction = float(settings.get("start_fraction", 0.8))
        return min(max(int(fraction * epochs), 0), max(epochs - 1, 0))

    @property
    def drw_beta(self) -> float:
        return float((self.drw or {}).get("beta", 0.9999))

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """The run config with this recipe's overrides merged in (the config itself is unchanged)."""
        merged = config.to_dict()
        sections = {"model": dict(self.model), "optimizer": dict(self.optimizer),
                    "training": dict(self.training), "augmentation": dict(self.augmentation)}
        for key, value in self.regularisation.items():
            sections[REGULARISATION_KEYS[key]][key] = value
        for section, overrides in sections.items():
            merged[section] = deep_merge(merged[section], overrides)
        try:
            return TrainConfig.from_dict(merged)
        except ConfigError as exc:
            raise ConfigError(f"recipe '{self.name}': {exc}") from None

    def get_config(self) -> dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Recipe":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ConfigError(f"recipe '{config.get('name', '?')}': unknown key '{unknown[0]}'; "
                              f"valid: base, {', '.join(sorted(valid - {'name'}))}")
        return cls(**copy.deepcopy(config))
