"""Whole-slide images: reading (OpenSlide), tissue detection, tiling at the model's field of
view, a bounded tile pipeline to a model or a server, and heatmap/GeoJSON/CSV/summary outputs.

TensorFlow-free: it needs the ``serve`` extra only.  See ``histoedge slide --help``.
"""
