"""Code generated from proto/inference.proto by `python -m serving.proto_gen`."""
