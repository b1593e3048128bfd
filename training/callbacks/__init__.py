"""Training callbacks: deferred re-weighting, plateau LR scaling, the learning-onset gate and the history CSV.

Each lives in its own module and imports Keras; import them from there, e.g.
``from training.callbacks.drw import DeferredReweighting``.
"""
