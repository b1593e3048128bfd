"""Training: datasets, regularised CNN recipes, the stacking ensemble, metrics and reports.

Importing this package is cheap; TensorFlow is imported by the modules that need it.
"""
