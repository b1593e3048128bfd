"""Datasets: the synthetic H&E generator, loaders, patient-grouped splits and the tf.data pipeline.

Importing this package does not import TensorFlow: it exports the TensorFlow-free
names (loaders, splits, the generator, :class:`AugmentConfig`).  The tf.data pipeline
lives in :mod:`histoedge.training.data.pipeline`, which imports TensorFlow; import it
from there.  :func:`augment_batch` and :func:`stain_jitter` import TensorFlow when called.

Example::

    from histoedge.training.data import load_dataset, split_dataset
    from histoedge.training.data.pipeline import make_tf_dataset

    dataset = load_dataset("data/synth", image_size=64)
    splits = split_dataset(dataset, seed=0)
    train = make_tf_dataset(dataset.images[splits["train"]], dataset.labels[splits["train"]],
                            dataset.num_classes, batch_size=32, training=True)
"""

from __future__ import annotations

from histoedge.training.data.augment import AugmentConfig, augment_batch, stain_jitter
from histoedge.training.data.images import Dataset, decode_image, load_dataset
from histoedge.training.data.layouts import ImageRecord, detect_layout
from histoedge.training.data.splits import (SplitRow, read_splits_csv, split_dataset, splits_from_rows,
                                            write_splits_csv)
from histoedge.training.data.synth import generate_synthetic
from histoedge.training.errors import DataError

__all__ = ["AugmentConfig", "DataError", "Dataset", "ImageRecord", "SplitRow", "augment_batch",
           "decode_image", "detect_layout", "generate_synthetic", "load_dataset", "read_splits_csv",
           "split_dataset", "splits_from_rows", "stain_jitter", "write_splits_csv"]
