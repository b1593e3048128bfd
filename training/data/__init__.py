"""Datasets: the synthetic H&E generator, loaders, patient-grouped splits and the tf.data pipeline.

Importing this package does not import TensorFlow: every public name is resolved
lazily on first access. :func:`make_tf_dataset` (``training.data.pipeline``) imports
TensorFlow when it is first accessed; :func:`augment_batch` and :func:`stain_jitter`
import it when called; :class:`AugmentConfig`, the loaders and the splits never do.

Example::

    from training.data import load_dataset, split_dataset, make_tf_dataset

    dataset = load_dataset("data/synth", image_size=64)
    splits = split_dataset(dataset, seed=0)
    train = make_tf_dataset(dataset.images[splits["train"]], dataset.labels[splits["train"]],
                            dataset.num_classes, batch_size=32, training=True)
"""

from __future__ import annotations

import importlib

from histoedge import HistoedgeError


class DataError(HistoedgeError):
    """A dataset that cannot be used as given: missing folder, no images, one class, bad split."""


# public name -> module that defines it; imported on first attribute access
_LAZY = {
    "ImageRecord": "training.data.layouts",
    "detect_layout": "training.data.layouts",
    "Dataset": "training.data.images",
    "load_dataset": "training.data.images",
    "decode_image": "training.data.images",
    "split_dataset": "training.data.splits",
    "write_splits_csv": "training.data.splits",
    "read_splits_csv": "training.data.splits",
    "splits_from_rows": "training.data.splits",
    "SplitRow": "training.data.splits",
    "generate_synthetic": "training.data.synth",
    "AugmentConfig": "training.data.augment",
    "augment_batch": "training.data.augment",
    "stain_jitter": "training.data.augment",
    "make_tf_dataset": "training.data.pipeline",
}

__all__ = ["DataError", *_LAZY]


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'training.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
