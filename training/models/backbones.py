"""Keras Applications backbones under the histoedge head: raw 0..255 pixels in, softmax out.

The model is ``image -> preprocessing -> backbone (a nested keras.Model named "backbone") ->
global average pooling -> head``. The preprocessing is the application's own
``preprocess_input``, rebuilt from standard layers inside the model so that the exported graph
still takes uint8 pixels and the saved file loads without custom objects:

- "caffe" (ResNet50): a frozen 1x1 ``Dense`` that swaps RGB to BGR and subtracts the ImageNet mean;
- "torch" (DenseNet121): ``Rescaling(1/255)`` then ``Normalization`` with the ImageNet mean/variance;
- "builtin" (EfficientNetB0, MobileNetV3Small): the application rescales inside itself.

The backbone is always built with ``weights=None`` (no Keras code path that downloads runs);
a weights file is then loaded into it (:func:`load_backbone_weights`).

Example::

    from histoedge.training.config import CNNConfig
    from histoedge.training.models.backbones import build_model

    model = build_model(CNNConfig(backbone="mobilenetv3small", dense_units=[]), 2, 64)
    model.get_layer("backbone")          # the keras.applications MobileNetV3Small
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras
import numpy as np

from histoedge.training.config import CNNConfig, ConfigError
from histoedge.export.manifest import IMAGE
from histoedge.training.models.cnn import build_cnn, classification_head
from histoedge.training.models.registry import (CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,
                                                MIN_IMAGE_SIZE, BackboneSpec, get_backbone_spec,
                                                resolve_weights)

log = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"


def build_model(config: CNNConfig, num_classes: int, image_size: int,
                input_stats=None) -> keras.Model:
    """The custom CNN or a backbone model, as ``config.backbone`` says.

    Args:
        config: the ``model`` section; ``backbone`` and ``weights`` choose the architecture.
        num_classes: width of the softmax output.
        image_size: side S of the square float32 input [N, S, S, 3] with raw 0..255 pixels.
        input_stats: the custom CNN's channel statistics when ``input_scaling`` is "standardise".
    """
    if config.backbone == "custom":
        return build_cnn(config, num_classes, image_size, input_stats)
    return build_backbone_model(config, num_classes, image_size)


def build_backbone_model(config: CNNConfig, num_classes: int, image_size: int) -> keras.Model:
    """A Keras Applications backbone with in-model preprocessing and the histoedge head.

    Raises:
        ConfigError: unknown backbone, image smaller than 32 px, unreadable or mismatched weights.
    """
    spec = get_backbone_spec(config.backbone)
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"model.backbone={spec.name} needs images of at least {MIN_IMAGE_SIZE} px "
                          f"(Keras Applications' minimum), got {image_size}")
    weights = resolve_weights(spec.name, config.weights)

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name=IMAGE)
    x = _preprocessing(spec, inputs)
    application = getattr(keras.applications, spec.application)
    backbone = application(include_top=False, weights=None, input_shape=(image_size, image_size, 3),
                           name=BACKBONE_LAYER, **dict(spec.options))
    if weights is not None:
        load_backbone_weights(backbone, weights, spec)
    set_batch_norm_momentum(backbone, config.batch_norm_momentum)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, classification_head(x, config, num_classes), name=f"histoedge_{spec.name}")


def set_batch_norm_momentum(backbone: keras.Model, momentum: float) -> int:
    """Give every batch-norm layer of the backbone ``model.batch_norm_momentum``; returns how many.

    Keras Applications build theirs with 0.99 or 0.999 (MobileNetV3), tuned for ImageNet-length
    training. From random initialisation on a few hundred steps, 0.999 leaves the moving statistics
    near their initial values, so inference-mode predictions stay at chance (seen: MobileNetV3Small
    at ROC-AUC 0.50 after 3 epochs). A pretrained backbone with frozen batch norm is unaffected:
    its statistics do not move at all.
    """
    layers = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = float(momentum)
    return len(layers)


def _preprocessing(spec: BackboneSpec, inputs):
    if spec.preprocessing == "builtin":
        return inputs
    if spec.preprocessing == "torch":
        x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
        return keras.layers.Normalization(mean=list(IMAGENET_MEAN_RGB),
                                          variance=[s * s for s in IMAGENET_STD_RGB], name="normalize")(x)
    if spec.preprocessing == "caffe":
        # preprocess_input(mode="caffe"): x[..., ::-1] - mean_bgr, as one frozen affine map.
        flip = keras.layers.Dense(3, name="rgb_to_bgr_minus_mean", trainable=False)
        x = flip(inputs)
        flip.set_weights([np.eye(3, dtype="float32")[::-1].copy(),
                          -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        return x
    raise ConfigError(f"backbone {spec.name!r}: unknown preprocessing {spec.preprocessing!r}")


def load_backbone_weights(backbone: keras.Model, path: Path, spec: BackboneSpec | None = None) -> None:
    """Load a weights file into the backbone (not the head).

    Accepted: Keras's own no-top ``.h5`` files (as in its cache) and ``.weights.h5`` files saved
    from a backbone with ``save_weights`` (see :func:`save_backbone_weights`).

    Raises:
        ConfigError: one line if the file does not fit this backbone.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns once per nested container; errors still raise
            backbone.load_weights(str(path))
    except Exception as error:  # Keras raises ValueError, KeyError or OSError for a wrong file
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model.weights: cannot load {path} into {spec.name if spec else backbone.name}: "
                          f"{first[:200]}") from None
    if spec is not None and spec.application.startswith("EfficientNet"):
        _fix_efficientnet_imagenet_variance(backbone)
    log.info("backbone %s: weights loaded from %s", backbone.name, path)


def _fix_efficientnet_imagenet_variance(backbone: keras.Model) -> None:
    # Keras's ImageNet EfficientNet weights store the standard deviations where the variance
    # belongs, and correct for it with an extra Rescaling layer that only exists when the model
    # is built with weights="imagenet". Built with weights=None (so nothing can download) that
    # layer is missing, so store the true variance instead: the same normalisation, one layer less.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Normalization):
            mean, variance = (np.asarray(w) for w in layer.get_weights()[:2])
            if np.allclose(variance.reshape(-1), IMAGENET_STD_RGB, atol=1e-4):
                layer.set_weights([mean, np.square(variance)] + layer.get_weights()[2:])
                log.info("EfficientNet: ImageNet normalisation variance squared (see Keras issue 49930)")
            return


def save_backbone_weights(model: keras.Model, path: str | Path) -> Path:
    """Save the backbone part of a histoedge model, for ``model.weights`` of a later run.

    Example::

        save_backbone_weights(keras.models.load_model("run/members/resnet/model.keras"), "r.weights.h5")
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ConfigError(f"backbone weights files must end in .weights.h5, got {path.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        backbone_of(model).save_weights(str(path))
    return path


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested Keras Applications model of a histoedge backbone model."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ConfigError(f"model {model.name!r} has no backbone (model.backbone is 'custom')") from None
