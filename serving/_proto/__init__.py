"""Code generated from proto/inference.proto by `python proto/generate.py`."""
