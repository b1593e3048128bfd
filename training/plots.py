"""PNG figures for a run: training curves, ROC overlay, confusion matrices, reliability diagram.

Matplotlib runs on the non-interactive Agg backend, so no display is needed.  Every function
writes one PNG and returns its path.

Example:
    >>> plot_roc({"ensemble": (y, probs)}, "run/plots/roc.png")
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from histoedge.training.metrics import ECE_BINS, roc_auc  # noqa: E402


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def read_history(path) -> dict[str, list[float]]:
    """Columns of a Keras ``CSVLogger`` file (``epoch``, ``loss``, ``val_loss``, ...) as float lists."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                continue
    return columns


def _epoch_axis(epochs, count: int) -> list:
    """1-based epoch numbers (Keras' CSVLogger counts from 0, some loggers from 1)."""
    if not epochs or len(epochs) != count:
        return list(range(1, count + 1))
    return [e + 1 for e in epochs] if min(epochs) == 0 else list(epochs)


def plot_history(history: dict, path, title: str = "") -> Path:
    """Training and validation accuracy (left) and loss (right) per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = history.get("epoch")
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key)
            if values:
                ax.plot(_epoch_axis(epochs, len(values)), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def _roc_points(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order]
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], scores.size - 1]
    tp = np.cumsum(hits)[last]
    fp = (last + 1) - tp
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def plot_roc(curves: dict, path, positive_class: int = 1, title: str = "ROC (test split)") -> Path:
    """Overlay ROC curves; ``curves`` maps a name to ``(labels [N], probabilities [N, C])``.

    Binary curves use P(positive class); multi-class curves are micro-averaged one-vs-rest
    (every image-class pair is one score), and the legend gives that micro AUC.
    """
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (labels, probs) in curves.items():
        labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
        if probs.shape[1] == 2:
            positive, scores = labels == positive_class, probs[:, positive_class]
        else:
            positive = (np.eye(probs.shape[1])[labels] > 0).ravel()
            scores = probs.ravel()
        fpr, tpr = _roc_points(positive, scores)
        width = 2.4 if name == "ensemble" else 1.2
        ax.plot(fpr, tpr, linewidth=width, label=f"{name} (AUC {roc_auc(positive, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_confusion(matrix, classes, path, title: str = "") -> Path:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.asarray(matrix)
    size = 2.4 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_reliability(curves: dict, path, n_bins: int = ECE_BINS, title: str = "Reliability (test split)") -> Path:
    """Accuracy against mean arg-max confidence in equal-width bins, one line per model."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    edges = np.linspace(0, 1, n_bins + 1)
    for name, (labels, probs) in curves.items():
        probs = np.asarray(probs, dtype=np.float64)
        confidence = probs.max(axis=1)
        correct = probs.argmax(axis=1) == np.asarray(labels)
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        used = [b for b in range(n_bins) if np.any(bins == b)]
        ax.plot([confidence[bins == b].mean() for b in used], [correct[bins == b].mean() for b in used],
                marker="o", markersize=3, linewidth=2.4 if name == "ensemble" else 1.0, label=name)
    ax.plot(edges, edges, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)
