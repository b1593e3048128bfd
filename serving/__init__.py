"""Serving: an Open Inference Protocol (KServe V2) gRPC server on onnxruntime, and its client.

Nothing in this package imports TensorFlow.
"""
