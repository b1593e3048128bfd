"""Code generated from proto/*.proto by `python proto/generate.py`."""
