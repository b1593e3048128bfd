"""Combine member probabilities: stacking, soft vote or a single model, and ``ensemble.json``.

The meta-learner is fitted on validation predictions only: :func:`fit_ensemble` takes the
members' validation probabilities and labels and nothing else, and the decision threshold is
chosen on the same validation rows.  The test split is used once, afterwards, to score.

``ensemble.json`` holds everything needed to recompute the ensemble's probabilities from the
members' probabilities.  Its format, its checks and the meta-learner's arithmetic are defined
once, in :mod:`histoedge.export.ensemble_spec`, which the export stage reads too; the weights
are fitted here:

- ``stacking``: logistic regression on member-major features ``[p_m0_c0, p_m0_c1, ..., p_m1_c0, ...]``,
  by default with no member weighted against its own class (:func:`fit_stacking`).
- ``soft_vote``: weights on the simplex, either uniform or fitted on validation by minimising the
  log loss (weights parametrised as a softmax, L-BFGS).
- ``single``: the one member's probabilities.

Example:
    >>> ensemble = fit_ensemble("stacking", members=["a", "b"], val_probs=[pa, pb], val_labels=y,
    ...                         classes=["benign", "malignant"], image_size=64)
    >>> ensemble.save("run/ensemble.json")
    >>> Ensemble.load("run/ensemble.json").predict_proba([pa_test, pb_test])
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from histoedge.export.ensemble_spec import METHODS, EnsembleSpec
from histoedge.export.errors import EnsembleSpecError
from histoedge.training.config import STACKING_WEIGHTS
from histoedge.training.errors import EnsembleError
from histoedge.training.thresholds import point_threshold

DEFAULT_STACKING_C = 1.0

log = logging.getLogger(__name__)


def stack_features(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Member-major concatenation of member probabilities: [N, M*C]."""
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in member_probs], axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def choose_threshold(y_true, positive_probs, target_sensitivity: float = 0.95, positive_class: int = 1) -> float:
    """Highest threshold t with sensitivity(P(positive) >= t) >= target on the given (validation) rows.

    The ``validation_point`` rule of :mod:`histoedge.training.thresholds`; runs use the rule named
    by ``ensemble.threshold_rule`` (by default one with a patient-bootstrap margin).

    Raises:
        EnsembleError: if there are no positive rows to measure sensitivity on.
    """
    return point_threshold(y_true, positive_probs, target_sensitivity, positive_class)


@dataclass
class Ensemble:
    """A fitted combination of member probabilities; serialises to ``ensemble.json``.

    Args:
        method: "stacking", "soft_vote" or "single".
        members: recipe names, in the order their probabilities are passed.
        classes: class names (column order of every probability array).
        image_size: side of the square input images.
        positive_class: index of the positive class (binary) or None.
        threshold: decision threshold on P(positive) (binary) or None (arg-max).
        target_sensitivity: validation sensitivity the threshold was chosen for.
        stacking: ``{"coef", "intercept", "multi_class"}`` (method "stacking", else empty).
        soft_vote: ``{"weights"}`` (method "soft_vote", else empty).
    """

    method: str
    members: list
    classes: list
    image_size: int
    positive_class: int | None = None
    threshold: float | None = None
    target_sensitivity: float = 0.95
    stacking: dict = field(default_factory=dict)
    soft_vote: dict = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def predict_proba(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """Ensemble probabilities [N, C] from the members' probabilities (one [N, C] array each)."""
        if len(member_probs) != len(self.members):
            raise EnsembleError(f"expected probabilities of {len(self.members)} members, got {len(member_probs)}")
        stacked = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs], axis=1)
        return self.spec().combine(stacked)

    def spec(self) -> EnsembleSpec:
        """This ensemble as the checked ``ensemble.json`` contract (raises EnsembleError)."""
        return _checked(self.get_config())

    def predict(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """Class indices: binary thresholded on P(positive), multi-class arg-max."""
        from histoedge.training.metrics import predict_labels
        return predict_labels(self.predict_proba(member_probs), self.threshold, self.positive_class or 1)

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> "Ensemble":
        _checked(config)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in config.items() if k in known})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.get_config(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Ensemble":
        try:
            return cls.from_config(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise EnsembleError(f"cannot read {path}: {error}") from error


def _checked(config: dict) -> EnsembleSpec:
    try:
        return EnsembleSpec.from_dict(config)
    except EnsembleSpecError as error:
        raise EnsembleError(str(error)) from error


def member_support(coef, n_members: int, n_classes: int) -> np.ndarray:
    """How much each member's probabilities push the meta-learner towards the class they name.

    For member m, the sum over classes c of (the weight of ``p_m_c`` in class c's logit minus its
    mean weight over all logits). Binary models store one row (class 1's logit; class 0's is 0),
    which gives ``(w_m_c1 - w_m_c0) / 2``. Negative: the member's vote counts against its own class.

    Example:
        >>> member_support([[-1.0, 1.0, 0.5, -0.5]], n_members=2, n_classes=2)
        array([ 1. , -0.5])
    """
    weights = np.asarray(coef, dtype=np.float64)
    if n_classes == 2 and weights.shape[0] == 1:
        weights = np.vstack([np.zeros_like(weights), weights])
    weights = weights.reshape(n_classes, n_members, n_classes)  # [logit, member, feature class]
    own = np.einsum("cmc->m", weights)
    return own - weights.mean(axis=0).sum(axis=-1)


def fit_stacking(val_probs: Sequence[np.ndarray], val_labels, C: float = DEFAULT_STACKING_C,
                 weights: str = "non_negative", names: Sequence[str] | None = None) -> dict:
    """Logistic regression (multinomial for C > 2) on member-major validation probabilities.

    ``C`` is the inverse L2 strength; the default 1.0 is scikit-learn's, as in the seed project.
    On synthetic runs with about six patients per validation and test split, C from 0.1 to 100
    moved the ensemble's test ROC-AUC by up to 0.07, in a direction that changed from split to
    split, so no other value is better founded; pass ``C`` to override.

    ``weights="non_negative"`` (the default) keeps every member's support (:func:`member_support`)
    at or above zero, as in Breiman's stacked regressions: the member with the most negative support
    is dropped (its coefficients set to 0) and the rest refitted, until none is negative. Every member
    estimates the same probabilities, so a negative weight only fits noise in the rows it was fitted
    on; when a cross-fitting fold trains badly, it fits the fold model's failure and then counts the
    full member's good predictions against the class. ``"free"`` keeps the unconstrained fit.

    Example:
        >>> fit_stacking([pa, pb], y)["coef"]  # [[w_a_c0, w_a_c1, w_b_c0, w_b_c1]] for two classes
    """
    from sklearn.linear_model import LogisticRegression

    if weights not in STACKING_WEIGHTS:
        raise EnsembleError(f"unknown stacking weights {weights!r}; expected one of {STACKING_WEIGHTS}")
    labels = np.asarray(val_labels)
    if np.unique(labels).size < 2:
        raise EnsembleError("cannot fit the stacking meta-learner: the validation split has a single class")
    n_members, n_classes = len(val_probs), val_probs[0].shape[1]
    features = stack_features(val_probs)
    active = list(range(n_members))
    while True:
        columns = [m * n_classes + c for m in active for c in range(n_classes)]
        model = LogisticRegression(C=C, max_iter=2000)
        model.fit(features[:, columns], labels)
        if n_classes > 2 and model.coef_.shape[0] != n_classes:
            raise EnsembleError("cannot fit the stacking meta-learner: a class is missing from the validation split")
        support = member_support(model.coef_, len(active), n_classes)
        if weights == "free" or len(active) == 1 or support.min() >= 0:
            break
        dropped = active.pop(int(np.argmin(support)))
        log.info("stacking meta-learner: member %s counted against its own class (support %.3f); refitting without it",
                 names[dropped] if names else dropped, support.min())
    coef = np.zeros((model.coef_.shape[0], features.shape[1]))
    coef[:, columns] = model.coef_
    log.info("stacking meta-learner: C = %g, %d of %d members weighted", model.C, len(active), n_members)
    return {"coef": coef.tolist(), "intercept": model.intercept_.tolist(),
            "multi_class": "binary" if n_classes == 2 else "multinomial"}


def fit_vote_weights(val_probs: Sequence[np.ndarray], val_labels) -> list[float]:
    """Soft-vote weights on the simplex minimising validation log loss (softmax-parametrised L-BFGS)."""
    from scipy.optimize import minimize

    stacked = np.stack([np.asarray(p, np.float64) for p in val_probs])  # [M, N, C]
    labels = np.asarray(val_labels)
    true_probs = stacked[:, np.arange(labels.size), labels]  # [M, N]

    def loss(z):
        weights = _softmax(z)
        return -np.mean(np.log(np.clip(weights @ true_probs, 1e-12, None)))

    result = minimize(loss, np.zeros(len(val_probs)), method="L-BFGS-B")
    weights = _softmax(result.x)
    return (weights / weights.sum()).tolist()


def fit_ensemble(method: str, *, members: Sequence[str], val_probs: Sequence[np.ndarray], val_labels,
                 classes: Sequence[str], image_size: int, target_sensitivity: float = 0.95,
                 fit_weights: bool = True, stacking_C: float = DEFAULT_STACKING_C,
                 stacking_weights: str = "non_negative") -> Ensemble:
    """Fit the meta-learner and the decision threshold on validation predictions only.

    Args:
        method: "stacking", "soft_vote" or "single".
        members: recipe names, one per entry of ``val_probs``.
        val_probs: per member, validation probabilities [N_val, C].
        val_labels: validation labels [N_val].
        classes: class names; binary when there are two (positive class = index 1).
        image_size: model input side, stored for the export stage.
        target_sensitivity: validation sensitivity the binary threshold must reach.
        fit_weights: soft vote only; False gives uniform weights.
        stacking_C: inverse L2 strength of the stacking logistic regression.
        stacking_weights: "non_negative" (no member counted against its own class) or "free".
    """
    if method not in METHODS:
        raise EnsembleError(f"unknown ensemble method {method!r}; expected one of {METHODS}")
    if len(members) != len(val_probs) or not members:
        raise EnsembleError("need one validation probability array per member")
    if method == "single" and len(members) != 1:
        raise EnsembleError("method 'single' takes exactly one member")
    binary = len(classes) == 2
    ensemble = Ensemble(method=method, members=list(members), classes=list(classes), image_size=int(image_size),
                        positive_class=1 if binary else None, target_sensitivity=float(target_sensitivity))
    if method == "stacking":
        ensemble.stacking = fit_stacking(val_probs, val_labels, stacking_C, stacking_weights, names=members)
    elif method == "soft_vote":
        weights = fit_vote_weights(val_probs, val_labels) if fit_weights else [1.0 / len(members)] * len(members)
        ensemble.soft_vote = {"weights": weights}
    if binary:
        ensemble.threshold = choose_threshold(val_labels, ensemble.predict_proba(val_probs)[:, 1],
                                              target_sensitivity)
    return ensemble
