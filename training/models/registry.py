"""Backbones by name: which Keras Applications class, which input preprocessing, which cache file.

Import-light (no Keras), so the configuration can validate ``model.backbone`` at load time.
The Keras side is :mod:`histoedge.training.models.backbones`.

Example::

    from histoedge.training.models.registry import BACKBONES, get_backbone_spec
    get_backbone_spec("resnet50").preprocessing       # 'caffe'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from histoedge.training.errors import ConfigError

# ImageNet statistics used by Keras Applications' preprocess_input (RGB order, 0..1 scale).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# "caffe" mode: BGR order, 0..255 scale, mean subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BackboneSpec:
    """One Keras Applications backbone.

    Args:
        name: the ``model.backbone`` value.
        application: class name in ``keras.applications``.
        preprocessing: what the model does to raw 0..255 RGB pixels before the backbone, the
            same as the application's ``preprocess_input``: "caffe" (RGB->BGR, minus the ImageNet
            mean), "torch" (0..1, minus mean, over std), or "builtin" (the application already
            rescales inside itself).
        imagenet_file: file name of the no-top ImageNet weights in Keras's cache
            (``$KERAS_HOME/models/``, default ``~/.keras/models/``).
        options: extra constructor arguments.
    """

    name: str
    application: str
    preprocessing: str
    imagenet_file: str
    options: tuple[tuple[str, object], ...] = ()


_SPECS = (
    BackboneSpec("resnet50", "ResNet50", "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    BackboneSpec("efficientnetb0", "EfficientNetB0", "builtin", "efficientnetb0_notop.h5"),
    BackboneSpec("mobilenetv3small", "MobileNetV3Small", "builtin",
                 "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
                 options=(("include_preprocessing", True),)),
    BackboneSpec("densenet121", "DenseNet121", "torch",
                 "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
)
_REGISTRY = {spec.name: spec for spec in _SPECS}

#: Every valid ``model.backbone`` value; "custom" is the regularised CNN of ``models/cnn.py``.
BACKBONES = ("custom", *_REGISTRY)

#: Keras Applications refuse inputs smaller than this (all four listed backbones).
MIN_IMAGE_SIZE = 32


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a Keras Applications backbone under ``spec.name`` (e.g. another EfficientNet size)."""
    global BACKBONES
    if spec.preprocessing not in ("caffe", "torch", "builtin"):
        raise ConfigError(f"backbone {spec.name!r}: preprocessing must be caffe, torch or builtin")
    _REGISTRY[spec.name] = spec
    BACKBONES = ("custom", *_REGISTRY)
    return spec


def list_backbones() -> list[str]:
    return ["custom", *_REGISTRY]


def get_backbone_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded application weights: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(name: str, weights: str | None) -> Path | None:
    """The weights file to load for backbone ``name``, or None for random initialisation.

    "imagenet" maps to the no-top file in Keras's local cache and is never downloaded.

    Raises:
        ConfigError: one line naming the file that was looked for, if it is missing.
    """
    if weights is None:
        return None
    if weights == "imagenet":
        path = keras_cache_dir() / get_backbone_spec(name).imagenet_file
        if not path.is_file():
            raise ConfigError(
                f"model.weights=imagenet: {path} is not in Keras's local cache and nothing is downloaded "
                f"here; save the weights on a machine with internet and set model.weights to the file")
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: weights file {path} does not exist")
    return path
