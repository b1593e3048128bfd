"""Plots are written as PNG files (Agg backend, no display)."""

import numpy as np

from histoedge.training import plots


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_all_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.5 * y + 0.5 * rng.random(60), 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet([1, 1, 1], 60)
    written = [
        plots.plot_history({"epoch": [0, 1, 2], "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.7],
                            "loss": [0.9, 0.6, 0.4], "val_loss": [1.0, 0.8, 0.7]}, tmp_path / "h" / "curves.png"),
        plots.plot_roc({"a": (y, probs), "ensemble": (y, probs)}, tmp_path / "roc.png"),
        plots.plot_roc({"multi": (y3, p3)}, tmp_path / "roc3.png"),
        plots.plot_confusion([[10, 2], [3, 15]], ["benign", "malignant"], tmp_path / "cm.png", "cm"),
        plots.plot_reliability({"a": (y, probs)}, tmp_path / "rel.png"),
    ]
    assert all(_is_png(p) for p in written)


def test_roc_points_span_corners():
    fpr, tpr = plots._roc_points(np.array([True, False, True, False]), np.array([0.9, 0.8, 0.4, 0.1]))
    assert (fpr[0], tpr[0]) == (0, 0) and (fpr[-1], tpr[-1]) == (1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_read_history(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss,val_loss\n0,1.0,1.2\n1,0.5,0.9\n")
    history = plots.read_history(tmp_path / "history.csv")
    assert history == {"epoch": [0.0, 1.0], "loss": [1.0, 0.5], "val_loss": [1.2, 0.9]}


def test_epoch_axis_is_one_based():
    assert plots._epoch_axis([0.0, 1.0], 2) == [1.0, 2.0]
    assert plots._epoch_axis([1.0, 2.0], 2) == [1.0, 2.0]
    assert plots._epoch_axis(None, 3) == [1, 2, 3]
