"""The onnxruntime session every peer wrapper uses: configured exactly as ``histoedge serve --threads 1``.

Standard library, NumPy and onnxruntime only, so it imports in any of the peers' environments.
"""

from __future__ import annotations

import numpy as np


def open_session(path: str, threads: int = 1):
    """A CPU ``InferenceSession`` with ``threads`` intra-op threads, one inter-op thread, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(session, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Every graph output for one uint8 batch, as (name, array) pairs in graph order."""
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: batch})
    return list(zip(names, values))
