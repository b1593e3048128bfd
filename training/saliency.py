"""Grad-CAM saliency maps: where each member and the ensemble looked, for the report.

Grad-CAM (Selvaraju et al., 2017) weights the last convolutional feature maps by the mean
gradient of the class *logit* with respect to them, keeps the positive part and upsamples it
to the tile.  The ensemble's map is the mean of its members' maps for the ensemble's class
(the members' maps are each scaled to [0, 1] first, so no member dominates by scale).

For the report, :func:`saliency_figure` picks, per true class, the test image the ensemble got
right most confidently and the one it got wrong most confidently, and draws the tile next to
each member's and the ensemble's map overlaid on it.

Example::

    maps = grad_cam(model, images, class_index=1)     # float32 [N, H, W] in [0, 1]
    path = saliency_figure("runs/r1")                  # runs/r1/plots/saliency.png, or None
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SALIENCY_PNG = "saliency.png"


def _feature_layer(model):
    """The last layer with a 4-D output (the last convolutional feature maps)."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(shape.shape) == 4 and "pool" not in layer.name and "dropout" not in layer.name:
            return layer
    raise ValueError(f"model {model.name!r} has no convolutional feature maps for Grad-CAM")


def _outer_output(layer):
    """The layer's output tensor in the graph of the model that calls it.

    For a nested model (a Keras Applications backbone) ``layer.output`` is the tensor of its own
    inner graph, which is not connected to the outer model's inputs; the tensor of the call in
    the outer graph is the output of its last inbound node (Keras 3 has no public accessor).
    """
    import keras

    if isinstance(layer, keras.Model) and getattr(layer, "_inbound_nodes", None):
        return layer._inbound_nodes[-1].output_tensors[0]
    return layer.output


def grad_cam(model, images: np.ndarray, class_index: int | np.ndarray) -> np.ndarray:
    """Grad-CAM maps of ``model`` for ``class_index`` (one for all, or one per image).

    Args:
        model: a functional Keras classifier taking raw 0..255 pixels (as the run's members do).
        images: uint8 or float [N, H, W, 3].
        class_index: the class whose logit is explained.

    Returns:
        float32 [N, H, W], each map scaled to [0, 1] (all zeros where the gradient vanishes).
    """
    import keras
    import tensorflow as tf

    features = _feature_layer(model)
    head = model.layers[-1]
    explain = keras.Model(model.inputs, [_outer_output(features), head.input])
    x = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    classes = tf.convert_to_tensor(np.broadcast_to(np.asarray(class_index), (len(images),)).astype(np.int32))
    with tf.GradientTape() as tape:
        maps, hidden = explain(x, training=False)
        if isinstance(head, keras.layers.Dense):  # the logit, not the saturating softmax
            scores = tf.matmul(hidden, head.kernel) + (head.bias if head.use_bias else 0.0)
        else:
            scores = tf.math.log(model(x, training=False) + 1e-7)
        chosen = tf.gather(scores, classes, axis=1, batch_dims=1)
    grads = tape.gradient(chosen, maps)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def pick_examples(labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray) -> list[tuple[int, str]]:
    """Per true class: the most confident right and the most confident wrong test image.

    Returns ``(index, "right"|"wrong")`` pairs; a class with no right (or wrong) image has none.
    """
    picks = []
    for c in np.unique(labels):
        for kind, mask in (("right", (labels == c) & (predicted == c)), ("wrong", (labels == c) & (predicted != c))):
            idx = np.flatnonzero(mask)
            if len(idx):
                confidence = probabilities[idx, predicted[idx]]
                picks.append((int(idx[np.argmax(confidence)]), kind))
    return picks


def overlay(tile: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The tile with ``cam`` drawn over it in the 'jet' colour map, uint8 RGB."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](cam)[..., :3] * 255
    return np.clip((1 - alpha) * tile.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def _test_images(run_dir: Path, size: int):
    """The run's test images as the members saw them (stain-normalised when the run was) and labels."""
    from histoedge.export.stain import load_run_reference
    from histoedge.training.data import read_splits_csv
    from histoedge.training.data.images import decode_image

    rows = [r for r in read_splits_csv(run_dir / "splits.csv") if r.split == "test"]
    images, labels = [], []
    for row in rows:
        try:
            images.append(decode_image(Path(row.path).read_bytes(), size))
            labels.append(row.label)
        except (OSError, ValueError):
            continue
    if not images:
        return None, None
    images = np.stack(images)
    reference = load_run_reference(run_dir)
    if reference is not None:
        images = reference.normalise_batch(images)[0]
    return images, labels


def saliency_figure(run_dir, max_images: int = 2000) -> Path | None:
    """Draw ``RUN/plots/saliency.png``; None when the run's models or test images are not at hand."""
    run_dir = Path(run_dir)
    from histoedge.export.ensemble_spec import ENSEMBLE_FILE, EnsembleSpec

    if not (run_dir / ENSEMBLE_FILE).is_file() or not (run_dir / "splits.csv").is_file():
        return None
    spec = EnsembleSpec.load(run_dir / ENSEMBLE_FILE)
    paths = [run_dir / "members" / name / "model.keras" for name in spec.members]
    if not all(p.is_file() for p in paths):
        return None
    images, names = _test_images(run_dir, spec.image_size)
    if images is None:
        log.warning("saliency maps skipped: the test images of %s cannot be read", run_dir)
        return None
    images = images[:max_images]
    labels = np.array([list(spec.classes).index(n) for n in names[:max_images]])
    import keras

    models = [keras.models.load_model(p, compile=False) for p in paths]
    member_probs = np.stack([m.predict(images.astype(np.float32), batch_size=64, verbose=0) for m in models], axis=1)
    probabilities = np.asarray(spec.combine(member_probs))
    if len(spec.classes) == 2 and spec.threshold is not None and spec.positive_class is not None:
        positive = spec.positive_class
        predicted = np.where(probabilities[:, positive] >= spec.threshold, positive, 1 - positive)
    else:
        predicted = probabilities.argmax(axis=1)
    picks = pick_examples(labels, probabilities, predicted)
    if not picks:
        return None
    chosen = np.array([i for i, _ in picks])
    cams = np.stack([grad_cam(m, images[chosen], predicted[chosen]) for m in models])  # [M, K, H, W]
    ensemble = cams.mean(axis=0)
    return _draw(run_dir / "plots" / SALIENCY_PNG, images[chosen], cams, ensemble, spec, picks, labels,
                 predicted, probabilities)


def _draw(path, tiles, cams, ensemble, spec, picks, labels, predicted, probabilities) -> Path:
    from histoedge.training.plots import _save, plt

    columns = ["tile", *spec.members, "ensemble"]
    fig, axes = plt.subplots(len(tiles), len(columns), figsize=(1.6 * len(columns), 1.75 * len(tiles)),
                             squeeze=False)
    for row, ((index, kind), tile) in enumerate(zip(picks, tiles)):
        panels = [tile, *(overlay(tile, cams[m, row]) for m in range(len(spec.members))),
                  overlay(tile, ensemble[row])]
        for col, (panel, title) in enumerate(zip(panels, columns)):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row, 0].set_ylabel(f"{spec.classes[labels[index]]}\n{kind}: {spec.classes[predicted[index]]}\n"
                                f"p={probabilities[index, predicted[index]]:.2f}", fontsize=7)
    return _save(fig, path)


def saliency_blocks(run_dir) -> list[tuple]:
    """Report blocks (see ``training/report.py``) with the saliency figure; [] when it cannot be drawn."""
    try:
        path = saliency_figure(run_dir)
    except Exception as error:  # the report must not fail for want of a figure
        log.warning("saliency maps skipped: %s", error)
        return []
    if path is None:
        return []
    return [("h", 2, "Saliency maps (Grad-CAM, test)"),
            ("p", "Per true class, the test image the ensemble got right most confidently and the one it got "
                  "wrong most confidently (row label: true class, right/wrong: predicted class, probability). "
                  "Columns: the tile as the model saw it, each member's Grad-CAM map for the predicted class "
                  "(last convolutional layer, positive part, scaled to [0, 1]; red = high) and the ensemble's "
                  "(the mean of the members' maps)."),
            ("img", path, "Grad-CAM saliency maps")]
