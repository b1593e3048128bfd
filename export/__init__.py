"""Export: Keras runs to one ONNX graph per ensemble, quantisation, and the versioned model repository.

Importing this package is cheap; tf2onnx and TensorFlow are imported by the modules that need them.
"""
