"""Suite-wide test settings."""

import os

from tests import system_packages

# Quieter TensorFlow logs; set before any test module imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_sessionstart(session):
    # The README's test command installs the system programs the tests drive when they are missing.
    problem = system_packages.ensure()
    if problem:
        print(f"\nhistoedge tests: {problem}")
