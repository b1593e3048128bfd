"""CNN architectures. ``build_cnn`` imports Keras on first access; ``CNNConfig`` is import-light.

Example::

    from training.models import CNNConfig, build_cnn
    model = build_cnn(CNNConfig(batch_norm=True), num_classes=2, image_size=64)
"""

from __future__ import annotations

import importlib

from training.config import CNNConfig

_LAZY = {"build_cnn": "training.models.cnn"}

__all__ = ["CNNConfig", *_LAZY]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'training.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
