"""The regularised CNN: the seed's base architecture with switchable regularisers.

Only standard Keras layers, regularisers and constraints are used, so a saved model loads with
``keras.models.load_model(path, compile=False)`` and no custom objects.

Example::

    from histoedge.training.config import CNNConfig
    from histoedge.training.models.cnn import build_cnn, channel_statistics

    stats = channel_statistics(train_images)       # the default input_scaling standardises
    model = build_cnn(CNNConfig(regularizer="l2", l2=1e-4, batch_norm=True), 2, 64, stats)
    model.output_names   # ['probabilities']
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from histoedge.export.manifest import IMAGE, PROBABILITIES
from histoedge.training.config import CNNConfig, ConfigError

_REGULARIZERS = (None, "l1", "l2", "l1_l2")


def _kernel_regularizer(config: CNNConfig):
    if config.regularizer not in _REGULARIZERS:
        raise ConfigError(f"model.regularizer must be one of {_REGULARIZERS}, "
                          f"got {config.regularizer!r}")
    if config.regularizer == "l1":
        return keras.regularizers.L1(config.l1)
    if config.regularizer == "l2":
        return keras.regularizers.L2(config.l2)
    if config.regularizer == "l1_l2":
        return keras.regularizers.L1L2(l1=config.l1, l2=config.l2)
    return None


def _kernel_options(config: CNNConfig, conv: bool) -> dict:
    # A fresh regulariser/constraint per layer: sharing one instance is legal but confuses saving.
    # MaxNorm bounds each unit's incoming weight vector: a whole (k, k, in) filter for a conv.
    constraint = None
    if config.max_norm:
        constraint = keras.constraints.MaxNorm(config.max_norm, axis=[0, 1, 2] if conv else 0)
    return {"kernel_regularizer": _kernel_regularizer(config), "kernel_constraint": constraint,
            "kernel_initializer": config.kernel_initializer}


def _validate(config: CNNConfig, num_classes: int, image_size: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    if not config.filters:
        raise ConfigError("model.filters must list at least one conv block")
    if len(config.block_dropout) > len(config.filters):
        raise ConfigError(f"model.block_dropout has {len(config.block_dropout)} entries but "
                          f"there are only {len(config.filters)} blocks (model.filters)")
    if config.first_padding not in ("valid", "same"):
        raise ConfigError(f"model.first_padding must be 'valid' or 'same', got {config.first_padding!r}")
    if not 0.0 < config.batch_norm_momentum < 1.0:
        raise ConfigError(f"model.batch_norm_momentum must be in (0, 1), got {config.batch_norm_momentum}")
    smallest = config.kernel_size if config.first_padding == "valid" else 1
    if image_size < smallest:
        raise ConfigError(f"image size {image_size} is smaller than the first kernel ({smallest})")


# A channel that barely varies (a blank or single-colour dataset) is divided by at least this
# many grey levels, so standardising never blows its noise up into the signal.
MIN_CHANNEL_STD = 1.0


def channel_statistics(images: np.ndarray, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``images`` in 0..255 units.

    Summed in float64 over chunks, so a large uint8 split is never copied whole as floats.

    Args:
        images: [N, S, S, C] pixels (uint8 or float, raw 0..255).
        chunk: images per chunk.

    Example:
        >>> channel_statistics(np.full((2, 4, 4, 3), 200, np.uint8))
        ([200.0, 200.0, 200.0], [1.0, 1.0, 1.0])
    """
    if len(images) == 0:
        raise ConfigError("model.input_scaling=standardise needs at least one training image")
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk], np.float64).reshape(-1, images.shape[-1])
        total += block.sum(0)
        squares += np.square(block).sum(0)
    count = len(images) * int(np.prod(images.shape[1:-1]))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return [float(m) for m in mean], [float(max(s, MIN_CHANNEL_STD)) for s in std]


def input_statistics(config: CNNConfig, images: np.ndarray) -> tuple[list[float], list[float]] | None:
    """What ``build_cnn``/``build_model`` need as ``input_stats`` for ``config``: the channel
    statistics of ``images`` when the custom CNN standardises, else None."""
    if config.input_scaling == "standardise" and config.backbone == "custom":
        return channel_statistics(images)
    return None


def input_scaling(config: CNNConfig, input_stats: tuple[Sequence[float], Sequence[float]] | None):
    """The first layer: raw pixels / 255, or standardised with the training images' statistics."""
    if config.input_scaling == "unit":
        return keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    if input_stats is None:
        raise ConfigError("model.input_scaling=standardise needs the training images' channel "
                          "statistics (channel_statistics)")
    mean, std = (list(map(float, v)) for v in input_stats)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"channel statistics must give 3 means and 3 positive deviations, got {mean}, {std}")
    # A Rescaling layer with per-channel scale and offset, not Normalization: Normalization keeps
    # its statistics as tensors built outside the traced call, which tf2onnx turns into extra
    # graph inputs instead of constants.
    return keras.layers.Rescaling(scale=[1.0 / s for s in std], offset=[-m / s for m, s in zip(mean, std)],
                                  name="standardise")


def build_cnn(config: CNNConfig, num_classes: int, image_size: int,
              input_stats: tuple[Sequence[float], Sequence[float]] | None = None) -> keras.Model:
    """Build the functional CNN.

    Args:
        config: architecture and regularisation switches (:class:`training.config.CNNConfig`).
        num_classes: width of the softmax output (2 for binary).
        image_size: side S of the square float32 input [N, S, S, 3] with raw 0..255 pixels.
        input_stats: (mean, std) per channel from :func:`channel_statistics`; needed only when
            ``config.input_scaling`` is "standardise".

    Returns:
        An uncompiled ``keras.Model`` whose output layer "probabilities" is a softmax.
    """
    _validate(config, num_classes, image_size)
    dropouts = list(config.block_dropout) + [0.0] * (len(config.filters) - len(config.block_dropout))

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=IMAGE)
    x = input_scaling(config, input_stats)(inputs)
    size = image_size
    for block, (filters, rate) in enumerate(zip(config.filters, dropouts), start=1):
        padding = config.first_padding if block == 1 else "same"
        x = keras.layers.Conv2D(filters, config.kernel_size, padding=padding,
                                use_bias=not config.batch_norm, name=f"conv{block}",
                                **_kernel_options(config, conv=True))(x)
        if padding == "valid":
            size = size - config.kernel_size + 1
        if config.batch_norm:
            x = keras.layers.BatchNormalization(momentum=config.batch_norm_momentum, name=f"bn{block}")(x)
        x = keras.layers.Activation(config.activation, name=f"act{block}")(x)
        # Pool only while the map is big enough, so small inputs (32 px) still build.
        if size >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool{block}")(x)
            size //= 2
        if rate > 0:
            x = keras.layers.Dropout(rate, name=f"dropout{block}")(x)

    if config.global_pool:
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, classification_head(x, config, num_classes), name="histoedge_cnn")


def classification_head(x, config: CNNConfig, num_classes: int):
    """The head on pooled features: ``dense_units`` hidden layers with the config's dropout, batch
    normalisation and kernel options, then the softmax output named as the contract says."""
    for index, units in enumerate(config.dense_units, start=1):
        if config.head_dropout > 0:
            x = keras.layers.Dropout(config.head_dropout, name=f"head_dropout{index}")(x)
        x = keras.layers.Dense(units, use_bias=not config.batch_norm, name=f"dense{index}",
                               **_kernel_options(config, conv=False))(x)
        if config.batch_norm:
            x = keras.layers.BatchNormalization(momentum=config.batch_norm_momentum, name=f"dense_bn{index}")(x)
        x = keras.layers.Activation(config.activation, name=f"dense_act{index}")(x)
    if config.head_dropout > 0:
        x = keras.layers.Dropout(config.head_dropout, name="head_dropout_out")(x)
    # The softmax layer is not followed by a ReLU, so it keeps Keras' Glorot initialisation.
    output_options = {**_kernel_options(config, conv=False), "kernel_initializer": "glorot_uniform"}
    return keras.layers.Dense(num_classes, activation="softmax", name=PROBABILITIES, **output_options)(x)
