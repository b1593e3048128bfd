"""Learning-rate schedules and the optimizer, built from :class:`training.config.OptimizerConfig`.

Every schedule is wrapped in :class:`ScaledSchedule`, whose multiplier lives in a variable: Keras'
own ReduceLROnPlateau cannot lower the rate of an optimizer driven by a schedule, so the plateau
callback (:class:`training.callbacks.plateau.ReduceLROnPlateau`) scales the multiplier instead.
That way the seed's combination (inverse time decay + reduce on plateau) actually works.

Example::

    schedule = build_schedule(OptimizerConfig(), steps_per_epoch=20, epochs=30)
    float(schedule(1000))      # 1e-3 / (1 + 1000 / 1000) = 5e-4
    optimizer = build_optimizer(OptimizerConfig(clipnorm=1.0), schedule)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from histoedge.training.config import ConfigError, OptimizerConfig

SCHEDULES = ("inverse_time", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@keras.saving.register_keras_serializable(package="histoedge")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``base(step) * scale``, where ``scale`` is a non-trainable variable callbacks may change.

    Args:
        base: a LearningRateSchedule or a constant learning rate.
        scale: initial multiplier (1.0).
    """

    def __init__(self, base, scale: float = 1.0):
        self.base = base
        self.scale = tf.Variable(float(scale), trainable=False, dtype=tf.float32, name="lr_scale")

    def __call__(self, step):
        if isinstance(self.base, keras.optimizers.schedules.LearningRateSchedule):
            rate = tf.cast(self.base(step), tf.float32)
        else:
            rate = tf.constant(float(self.base), tf.float32)
        return rate * self.scale

    def get_config(self):
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {"base": base, "scale": float(self.scale.numpy())}

    @classmethod
    def from_config(cls, config):
        base = config["base"]
        if isinstance(base, dict):
            base = keras.optimizers.schedules.deserialize(base)
        return cls(base, config.get("scale", 1.0))


def build_schedule(config: OptimizerConfig, steps_per_epoch: int, epochs: int) -> ScaledSchedule:
    """The configured schedule, wrapped in a :class:`ScaledSchedule`.

    Args:
        config: ``learning_rate``, ``schedule``, ``decay_steps`` (None = the whole run),
            ``decay_rate`` and ``min_lr_fraction`` (cosine floor) are read.
        steps_per_epoch, epochs: size of the run, for ``decay_steps: null``.
    """
    if config.learning_rate <= 0:
        raise ConfigError(f"optimizer.learning_rate must be > 0, got {config.learning_rate}")
    decay_steps = config.decay_steps or max(1, steps_per_epoch * epochs)
    if decay_steps <= 0:
        raise ConfigError(f"optimizer.decay_steps must be > 0, got {config.decay_steps}")
    if config.schedule == "inverse_time":
        base = keras.optimizers.schedules.InverseTimeDecay(
            config.learning_rate, decay_steps=decay_steps, decay_rate=config.decay_rate)
    elif config.schedule == "cosine":
        base = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=decay_steps, alpha=config.min_lr_fraction)
    elif config.schedule == "constant":
        base = float(config.learning_rate)
    else:
        raise ConfigError(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, "
                          f"got {config.schedule!r}")
    return ScaledSchedule(base)


def build_optimizer(config: OptimizerConfig, learning_rate) -> keras.optimizers.Optimizer:
    """The configured optimizer with gradient clipping (``clipnorm``/``clipvalue``) when set."""
    options = {"learning_rate": learning_rate}
    if config.clipnorm is not None:
        options["clipnorm"] = float(config.clipnorm)
    if config.clipvalue is not None:
        options["clipvalue"] = float(config.clipvalue)
    if config.weight_decay is not None:
        options["weight_decay"] = float(config.weight_decay)
    if config.name == "adam":
        return keras.optimizers.Adam(**options)
    if config.name == "adamw":
        options.setdefault("weight_decay", 0.004)
        return keras.optimizers.AdamW(**options)
    if config.name == "sgd":
        return keras.optimizers.SGD(momentum=config.momentum, **options)
    if config.name == "rmsprop":
        return keras.optimizers.RMSprop(**options)
    raise ConfigError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {config.name!r}")
