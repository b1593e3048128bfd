"""Losses by name: cross-entropy, focal, LDAM and the seed's margin-weighted BCE (one-hot targets,
probabilities).

TensorFlow is imported only when a loss is built. ``get`` accepts a name or a config dict
``{"name": ..., **kwargs}``; ``serialize`` gives back that dict.

Example::

    from histoedge.training import losses
    loss = losses.get({"name": "focal", "gamma": 3.0}, num_classes=2)
    losses.serialize(loss)   # {"name": "focal", "alpha": 0.25, "gamma": 3.0, ...}
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Sequence

from histoedge.training.config import ConfigError

# name -> "module:class"; modules are imported on use so this package stays import-light
_REGISTRY = {
    "crossentropy": "histoedge.training.losses.crossentropy:CrossEntropy",
    "distillation": "histoedge.training.losses.distillation:DistillationLoss",
    "focal": "histoedge.training.losses.focal:FocalLoss",
    "ldam": "histoedge.training.losses.ldam:LDAMLoss",
    "seed_margin_bce": "histoedge.training.losses.seed_margin:SeedMarginBCE",
}
_ALIASES = {"categorical_crossentropy": "crossentropy", "ce": "crossentropy",
            "focal_loss": "focal"}

__all__ = ["get", "serialize", "names", "loss_class"]


def names() -> list[str]:
    """Registered loss names."""
    return sorted(_REGISTRY)


def loss_class(name: str):
    """The class registered under ``name`` (or one of its aliases)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown loss '{name}'; known losses: {', '.join(names())}")
    module_name, _, class_name = _REGISTRY[key].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get(name_or_config: str | dict[str, Any], *, num_classes: int | None = None,
        class_counts: Sequence[int] | None = None, label_smoothing: float | None = None):
    """Build a loss from a name or ``{"name": ..., **kwargs}``.

    Args:
        name_or_config: the loss name or its config dict (as from :func:`serialize`).
        num_classes: C, so the loss can hold per-class weights (needed for re-weighting).
        class_counts: training images per class; passed to losses that need them (LDAM).
        label_smoothing: default smoothing when the config does not set its own.
    """
    config = {"name": name_or_config} if isinstance(name_or_config, str) else dict(name_or_config)
    if "name" not in config:
        raise ConfigError(f"a loss config needs a 'name' (one of {', '.join(names())}), got {config}")
    cls = loss_class(config.pop("name"))
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in config if k not in params or k == "self")
    if unknown:
        valid = sorted(k for k in params if k not in ("self", "name", "reduction", "dtype"))
        raise ConfigError(f"unknown key '{unknown[0]}' for loss {cls.__name__}; "
                          f"valid: {', '.join(valid)}")
    if getattr(cls, "needs_class_counts", False) and config.get("class_counts") is None:
        config["class_counts"] = None if class_counts is None else [int(n) for n in class_counts]
    if num_classes is not None and config.get("num_classes") is None and "num_classes" in params:
        config["num_classes"] = num_classes
    if label_smoothing is not None and "label_smoothing" not in config and "label_smoothing" in params:
        config["label_smoothing"] = label_smoothing
    return cls(**config)


def serialize(loss) -> dict[str, Any]:
    """The config dict of a histoedge loss, with ``name`` set to its registry name."""
    for name in names():
        if type(loss) is loss_class(name):
            config = loss.get_config()
            config.pop("reduction", None)
            config.pop("dtype", None)
            config["name"] = name
            return config
    raise ConfigError(f"{type(loss).__name__} is not a registered histoedge loss")
