"""Two-phase fine-tuning of a backbone model: the head first, then the top N backbone layers.

Phase 1 ("head") freezes the whole backbone; phase 2 ("fine_tune") makes the top
``unfreeze_layers`` layers of the backbone trainable and lowers the learning rate by
``learning_rate_ratio``. Batch-norm layers stay frozen, which in Keras 3 also means inference
mode (moving statistics used and kept), unless ``freeze_batch_norm`` is false. The custom CNN has
one phase with everything trainable.

Example::

    for phase in plan_phases(config, backbone=True):
        set_trainable(model, phase, config.training.fine_tune)
        ...compile at config.optimizer.learning_rate * phase.lr_scale, fit phase.start..phase.end
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from histoedge.training.config import FineTuneConfig, TrainConfig
from histoedge.training.models.backbones import backbone_of


@dataclass(frozen=True)
class Phase:
    """One ``fit`` call: epochs ``start`` (0-based, inclusive) to ``end`` (exclusive)."""

    name: str  # "all" (custom CNN), "head" or "fine_tune"
    start: int
    end: int
    lr_scale: float = 1.0

    @property
    def epochs(self) -> int:
        return self.end - self.start


def plan_phases(config: TrainConfig, backbone: bool) -> list[Phase]:
    """The phases of a run of ``config.training.epochs`` epochs; empty phases are left out."""
    epochs = int(config.training.epochs)
    if not backbone:
        return [Phase("all", 0, epochs)]
    tune = config.training.fine_tune
    head_end = min(int(tune.head_epochs), epochs)
    phases = [Phase("head", 0, head_end), Phase("fine_tune", head_end, epochs, float(tune.learning_rate_ratio))]
    return [phase for phase in phases if phase.epochs > 0]


def set_trainable(model: keras.Model, phase: Phase, settings: FineTuneConfig) -> list[str]:
    """Set the ``trainable`` flags for ``phase``; returns the names of the trainable backbone layers.

    The head (every layer outside the backbone) is always trainable, except frozen
    preprocessing layers, which stay as built.
    """
    if phase.name == "all":
        return []
    backbone = backbone_of(model)
    backbone.trainable = phase.name == "fine_tune"  # sets every nested layer's flag too
    if phase.name == "head":
        return []
    layers = backbone.layers
    count = len(layers) if settings.unfreeze_layers == "all" else int(settings.unfreeze_layers)
    for layer in layers[:len(layers) - count]:
        layer.trainable = False
    for layer in layers:
        if settings.freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return [layer.name for layer in layers if layer.trainable and layer.weights]
