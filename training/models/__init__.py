"""CNN architectures.

``CNNConfig`` is import-light and exported here; the Keras builder lives in
:mod:`histoedge.training.models.cnn`, which imports Keras.

Example::

    from histoedge.training.models import CNNConfig
    from histoedge.training.models.cnn import build_cnn, channel_statistics
    model = build_cnn(CNNConfig(batch_norm=True), num_classes=2, image_size=64,
                      input_stats=channel_statistics(train_images))
"""

from __future__ import annotations

from histoedge.training.config import CNNConfig

__all__ = ["CNNConfig"]
