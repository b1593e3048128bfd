"""Suite-wide test settings."""

import os

# Quieter TensorFlow logs; set before any test module imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
